"""The `vla_dino` wheel carries its presets and SSL recipes, found the same way as in a checkout.

Builds the wheel offline (`pip wheel --no-deps --no-build-isolation`, the venv's setuptools) from a
copy of the sources, installs it with `pip install --no-deps --target` into a temporary folder, and
resolves presets from a Python started in another folder with only that target ahead of the venv.
"""

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import vla_dino
from vla_dino.configs import PRETRAIN_DIR, SSL_DIR, pretrain_preset_names, ssl_recipe_names, ssl_recipe_path
from vla_dino.pretrain.config import PRESET_DIR, preset_path

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import json, sys
import vla_dino
from vla_dino.configs import ssl_recipe_path
from vla_dino.pretrain.config import load_config, preset_path, PRESET_DIR
from vla_dino.configs.loader import load
from vla_dino.ssl import SSLConfig
config = load_config(preset_path("cpu_smoke"))
ssl = load(SSLConfig, ssl_recipe_path("dinov2_default"))
print(json.dumps({
    "package": vla_dino.__file__,
    "preset": str(preset_path("cpu_smoke")),
    "presets": sorted(p.stem for p in PRESET_DIR.glob("*.yaml")),
    "init": config.model.init,
    "global_size": ssl.crops.global_size,
}))
"""


def test_checkout_finds_presets_inside_the_package():
    package = Path(vla_dino.__file__).resolve().parent
    assert PRESET_DIR == PRETRAIN_DIR == package / "configs" / "pretrain"
    assert preset_path("cpu_smoke") == package / "configs" / "pretrain" / "cpu_smoke.yaml"
    assert {"cpu_smoke", "demo_sim", "vits14_scratch", "continue_dinov2_base"} <= set(pretrain_preset_names())
    assert ssl_recipe_names() == ["dinov2_continued", "dinov2_default"]
    assert ssl_recipe_path("dinov2_default").parent == SSL_DIR
    with pytest.raises(FileNotFoundError, match=r"unknown SSL recipe 'nope'.*\['dinov2_continued', 'dinov2_default'\]"):
        ssl_recipe_path("nope")
    # the checkout's top-level configs/ is the same folder (one source of truth), not a copy
    assert (REPO / "configs").resolve() == package / "configs"


def test_wheel_install_resolves_presets_from_another_folder(tmp_path):
    pytest.importorskip("setuptools")
    source = tmp_path / "src"  # build from a copy: the shared checkout gets no build/ or egg-info
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "vla_dino", source / "vla_dino", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    wheels, target, elsewhere = tmp_path / "wheels", tmp_path / "target", tmp_path / "elsewhere"
    elsewhere.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(source)],
                   check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = wheels.glob("vla_dino-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {n for n in names if n.startswith("vla_dino/configs/") and n.endswith(".yaml")}
    expected = {f"vla_dino/configs/pretrain/{n}.yaml" for n in pretrain_preset_names()}
    expected |= {f"vla_dino/configs/ssl/{n}.yaml" for n in ssl_recipe_names()}
    assert shipped == expected
    assert not any(n.startswith(("configs/", "tests/", "policies/", "envs/")) for n in names)

    subprocess.run(pip + ["install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, cwd=tmp_path)
    # only the target ahead of the venv: the editable install's finder comes after sys.path entries
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=elsewhere, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    found = json.loads(run.stdout.strip().splitlines()[-1])
    assert Path(found["package"]).resolve().is_relative_to(target.resolve())
    assert Path(found["preset"]) == target / "vla_dino" / "configs" / "pretrain" / "cpu_smoke.yaml"
    assert found["presets"] == pretrain_preset_names()
    assert found["init"] == "tiny" and found["global_size"] == 224
