"""Recipes shipped inside the package: pretraining presets (`pretrain/<name>.yaml`, used by
`python -m vla_dino.pretrain --preset <name>`) and SSL recipes (`ssl/<name>.yaml`), which the
presets inherit through `base:`. All are read by `vla_dino.configs.loader`.

They are package data, so a source checkout, an editable install and a wheel install all find
them here, next to this file; a checkout's top-level `configs/` is a symlink to this folder, so
paths such as `configs/pretrain/cpu_smoke.yaml` keep working from the repository root.
"""

from __future__ import annotations

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent
PRETRAIN_DIR = CONFIG_DIR / "pretrain"
SSL_DIR = CONFIG_DIR / "ssl"


def pretrain_preset_names() -> list[str]:
    return sorted(p.stem for p in PRETRAIN_DIR.glob("*.yaml"))


def ssl_recipe_names() -> list[str]:
    return sorted(p.stem for p in SSL_DIR.glob("*.yaml"))


def ssl_recipe_path(name: str) -> Path:
    """`ssl/<name>.yaml`, e.g. "dinov2_default" (DINOv2's recipe) or "dinov2_continued"."""
    path = SSL_DIR / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"unknown SSL recipe {name!r}; available in {SSL_DIR}: {ssl_recipe_names()}")
    return path


__all__ = ["CONFIG_DIR", "PRETRAIN_DIR", "SSL_DIR", "pretrain_preset_names", "ssl_recipe_names", "ssl_recipe_path"]
