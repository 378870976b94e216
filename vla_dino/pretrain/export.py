"""Export the teacher backbone of a pretraining checkpoint (the DINOv2 convention: the teacher
is the model you keep) to

- `hf`:       `<out>/hf/`, a transformers folder (`AutoModel.from_pretrained` and
              `DinoEncoder.from_pretrained` both load it);
- `official`: `<out>/teacher_backbone.pth`, the official DINOv2 .pth layout.

    python -m vla_dino.pretrain.export --checkpoint outputs/pretrain --out exported --format both

Only the checkpoint is needed: it carries the encoder config and where the teacher sits in the
state dict, so exporting needs neither the SSL code nor the run's config.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from transformers import Dinov2Config, Dinov2WithRegistersConfig, PretrainedConfig

from vla_dino.encoder import DinoEncoder
from vla_dino.pretrain.checkpoint import load_checkpoint, resolve_checkpoint

FORMATS = ("hf", "official")


def teacher_from_state(model_state: Mapping[str, torch.Tensor], prefix: str, config: PretrainedConfig) -> DinoEncoder:
    """A fresh encoder holding the teacher backbone of an SSL model's full state dict (the keys
    under `prefix`, e.g. "teacher.backbone.")."""
    state = {k[len(prefix) :]: v for k, v in model_state.items() if k.startswith(prefix)}
    if not state:
        raise ValueError(f"checkpoint state dict has no entries under the teacher prefix {prefix!r}")
    encoder = DinoEncoder(config)
    encoder.load_state_dict(state, strict=True)
    return encoder.eval()


def teacher_from_checkpoint(checkpoint: dict[str, Any] | str | Path) -> DinoEncoder:
    """The teacher backbone of a checkpoint (a loaded dict, a file or a run folder)."""
    if not isinstance(checkpoint, dict):
        checkpoint = load_checkpoint(resolve_checkpoint(checkpoint))
    for key in ("encoder_config", "teacher_prefix"):
        if key not in checkpoint:
            raise ValueError(f"checkpoint has no {key!r} entry; it was not written by vla_dino.pretrain")
    fields = json.loads(checkpoint["encoder_config"])
    config_cls = Dinov2WithRegistersConfig if fields.get("model_type") == "dinov2_with_registers" else Dinov2Config
    return teacher_from_state(checkpoint["model"], checkpoint["teacher_prefix"], config_cls.from_dict(fields))


def export_encoder(encoder: DinoEncoder, out: str | Path, formats: Sequence[str] = FORMATS) -> dict[str, Path]:
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ValueError(f"unknown export format(s) {sorted(unknown)}; expected some of {list(FORMATS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    if "hf" in formats:
        written["hf"] = encoder.save_pretrained(out / "hf")
    if "official" in formats:
        written["official"] = encoder.save_official(out / "teacher_backbone.pth")
    return written


def export_checkpoint(checkpoint: dict[str, Any] | str | Path, out: str | Path, formats: Sequence[str] = FORMATS) -> dict[str, Path]:
    return export_encoder(teacher_from_checkpoint(checkpoint), out, formats)


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    parser = argparse.ArgumentParser(
        prog="python -m vla_dino.pretrain.export", description="Export the teacher backbone of a vla_dino pretraining checkpoint."
    )
    parser.add_argument("--checkpoint", required=True, help="a step_*.pt file, or a run folder (its latest checkpoint)")
    parser.add_argument("--out", required=True, help="output folder (hf/ and/or teacher_backbone.pth inside)")
    parser.add_argument("--format", choices=["hf", "official", "both"], default="both", help="what to write (default both)")
    args = parser.parse_args(argv)
    formats = FORMATS if args.format == "both" else (args.format,)
    path = resolve_checkpoint(args.checkpoint)
    written = export_checkpoint(path, args.out, formats)
    for kind, target in written.items():
        print(f"{kind}: {target}")
    return written


if __name__ == "__main__":
    main()
