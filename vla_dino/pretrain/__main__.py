"""Command line: `python -m vla_dino.pretrain --frames ./robot_logs [options]`.

The same command runs under torchrun for multi-GPU / multi-node (one process per GPU):
    torchrun --nproc_per_node 8 -m vla_dino.pretrain --preset vitb14_scratch --frames ./robot_logs

The flags are argparse; every value lands on the config tree by its dotted key and is decoded
by draccus through `vla_dino.configs.loader` (why not `draccus.parse`: that module's docstring).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Sequence

from vla_dino.configs.loader import parse_value
from vla_dino.pretrain.config import PRESET_DIR, load_config, preset_path
from vla_dino.pretrain.errors import EXIT_CODES, EXIT_SIGINT, EXIT_SIGTERM, ConfigError, PretrainError

DEFAULT_PRESET = "vits14_scratch"

# Friendly flags → dotted config keys (the flags are shortcuts; every field has a dotted form).
SHORTCUTS = {
    "frames": "data.frames",
    "cameras": "data.cameras",
    "init": "model.init",
    "output_dir": "output_dir",
    "steps": "train.steps",
    "stop_at_step": "train.stop_at_step",
    "batch_size": "data.batch_size",
    "device": "train.device",
    "num_workers": "data.num_workers",
    "frame_cache": "data.frame_cache",
    "seed": "train.seed",
}

EPILOG = f"""\
Config: the recipe lives in YAML presets (configs/pretrain/*.yaml): {', '.join(sorted(p.stem for p in PRESET_DIR.glob('*.yaml')))}.
Default preset: {DEFAULT_PRESET}. A preset's ssl: section inherits an SSL recipe (configs/ssl/*.yaml)
through `base:` and lists only what differs; a file of your own may do the same (`base:` is a path
relative to the file that names it).
Any config field can be overridden with its dotted path, either form:
  --ssl.optim.base_lr 1e-4   --train.precision=bf16   --set log.every_steps=5
Values are read as YAML (1e-4, true, null, [a, b]). Sections: output_dir, model.*, data.*,
train.*, checkpoint.*, log.*, log.collapse.*, distributed.*, export.*, ssl.{{crops,masking,heads,
loss,optim,schedules,continued}}.*; an unknown key is an error naming it.

Outputs in --output-dir: config.yaml, metrics.jsonl, metrics.csv, tensorboard/, checkpoints/
(step_*.pt, atomic, keep-last-N, also on SIGTERM/SIGINT), loss_curve.png, export/ (hf/ and
teacher_backbone.pth of the teacher backbone).

Multi-GPU / multi-node: the same command under torchrun (DDP; distributed.strategy=fsdp for
FSDP2), e.g.  torchrun --nproc_per_node 8 -m vla_dino.pretrain --preset vitb14_scratch --frames DIR

Exit codes: 0 done (or stopped at --stop-at-step), {', '.join(f'{code} {what}' for what, code in EXIT_CODES.items())}; an expected
error prints one `error: …` line (--debug: with its traceback), anything else a traceback (1).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vla_dino.pretrain",
        description="DINOv2 self-supervised pretraining (DINO + iBOT + KoLeo, EMA teacher) on robot camera frames.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--frames", action="append", metavar="DIR",
                        help="frames to train on (repeatable): image folders, videos, LeRobot datasets, HDF5 episode files")
    parser.add_argument("--cameras", nargs="+", metavar="NAME", help="keep only these cameras (default: all)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--config", metavar="YAML", help="a config file (e.g. configs/pretrain/vits14_scratch.yaml)")
    group.add_argument("--preset", metavar="NAME", help=f"a preset from configs/pretrain/ (default {DEFAULT_PRESET})")
    parser.add_argument("--init", metavar="SRC",
                        help="size name for from-scratch (vits14, vitb14_reg, tiny, …), hub id (facebook/dinov2-base), "
                             "local transformers folder, or official .pth / .safetensors")
    parser.add_argument("--output-dir", metavar="DIR", help="run folder (checkpoints, logs, export)")
    parser.add_argument("--resume", nargs="?", const="auto", metavar="CKPT",
                        help="continue the run in --output-dir from its latest checkpoint (fresh if none), "
                             "or from the given checkpoint file")
    parser.add_argument("--steps", type=int, help="total optimiser steps (the schedules span these)")
    parser.add_argument("--stop-at-step", type=int, metavar="N", help="stop at step N with a checkpoint (resume later)")
    parser.add_argument("--batch-size", type=int, help="frames per process per step")
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--num-workers", type=int, help="DataLoader worker processes")
    parser.add_argument("--frame-cache", metavar="DIR", help="decode every frame once into DIR (3·frame_size² bytes a frame) "
                        "and train from there; later runs reuse it (videos: no per-read decode from the keyframe)")
    parser.add_argument("--seed", type=int, help="run seed (data order, augmentations, init)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="dotted override (repeatable)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an expected error too")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, dict[str, Any]]:
    """Flags plus overrides {dotted key: value} from `--set k=v` and `--a.b.c v` / `--a.b.c=v`.

    A key given twice with different values (`--steps 5 --set train.steps=7`, or two `--set`s)
    is a ConfigError naming both: which one should win is a guess we do not make."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    overrides: dict[str, Any] = {}
    given: dict[str, str] = {}  # key → how it was given, for the conflict message

    def add(key: str, value: Any, how: str) -> None:
        if key in overrides and overrides[key] != value:
            raise ConfigError(f"{key} is given twice with different values: {given[key]} and {how}; keep one")
        overrides[key], given[key] = value, how

    for item in args.set:
        if "=" not in item:
            parser.error(f"--set {item!r}: expected KEY=VALUE, e.g. --set ssl.optim.base_lr=1e-4")
        key, value = item.split("=", 1)
        add(key.strip(), parse_value(value), f"--set {item}")
    i = 0
    while i < len(rest):
        token = rest[i]
        if not token.startswith("--") or "." not in token.split("=", 1)[0]:
            parser.error(f"unrecognized argument {token!r} (dotted config overrides look like --ssl.optim.base_lr 1e-4)")
        if "=" in token:
            key, value = token[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(rest):
                parser.error(f"{token} needs a value")
            key, value = token[2:], rest[i + 1]
            i += 2
        add(key, parse_value(value), f"--{key} {value}")
    for flag, key in SHORTCUTS.items():
        value = getattr(args, flag)
        if value is not None:
            shown = " ".join(map(str, value)) if isinstance(value, list) else value
            add(key, value, f"--{flag.replace('_', '-')} {shown}")
    return args, overrides


def main(argv: Sequence[str] | None = None) -> int:
    """Every expected failure ends here as one `error: …` line and its exit code (errors.py);
    `--debug` re-raises it with its traceback. Unexpected exceptions keep their traceback."""
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    try:
        return _run(argv)
    except PretrainError as error:
        if debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code


def _run(argv: Sequence[str] | None) -> int:
    args, overrides = parse_args(argv)
    try:
        config = load_config(args.config or preset_path(args.preset or DEFAULT_PRESET), overrides)
    except (ValueError, FileNotFoundError) as error:
        raise ConfigError(str(error)) from error
    if args.print_config:
        import yaml

        print(yaml.safe_dump(config.to_dict(), sort_keys=False))
        return 0
    if not config.data.frames:
        raise ConfigError("no frames given; pass --frames DIR (repeatable)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from vla_dino.pretrain.train import train  # heavy imports after --help

    result = train(config, resume=args.resume)
    if result.stopped_by == "SIGTERM":
        return EXIT_SIGTERM
    if result.stopped_by == "SIGINT":
        return EXIT_SIGINT
    return 0


if __name__ == "__main__":
    sys.exit(main())
