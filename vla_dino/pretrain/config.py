"""The pretraining run's configuration: nested dataclasses, filled from a YAML preset plus
command-line overrides. The recipe (every number) lives in `configs/pretrain/*.yaml`; the
defaults below only make a config complete when a preset leaves a field out.

Overrides use dotted paths into this tree, e.g. `ssl.optim.base_lr=1e-4` or
`train.steps=100`; an unknown path is an error that names it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import draccus
import yaml

from vla_dino.configs import PRETRAIN_DIR
from vla_dino.ssl.config import SSLConfig

PRESET_DIR = PRETRAIN_DIR  # package data (vla_dino/configs/pretrain): found alike from checkout, editable and wheel


@dataclass
class ModelConfig:
    # Size name (vits14, vitb14_reg, tiny, …) for a from-scratch run; otherwise a hub id
    # (facebook/dinov2-base), a local transformers folder or an official .pth/.safetensors file.
    init: str = "vits14"
    # Encoder config fields set on top of the size / checkpoint (e.g. drop_path_rate).
    encoder_overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    frames: list[str] = field(default_factory=list)  # folders / files, mixed sources
    cameras: list[str] | None = None  # camera names to keep; None = all
    frame_size: int = 256  # frames are decoded to frame_size² before multi-crop
    stride: int = 1  # temporal stride within an episode
    neighbor_offset: int = 0  # >0: a temporal-view neighbour within ±offset frames
    batch_size: int = 64  # per process; the global batch is batch_size × world size
    num_workers: int = 4


@dataclass
class TrainConfig:
    steps: int = 1000  # total optimiser steps; schedules are laid out over these
    stop_at_step: int | None = None  # stop early (with a checkpoint) to fit a job's time slot
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp16 | fp32
    max_nonfinite_steps: int = 5  # consecutive NaN/inf steps before the run stops


@dataclass
class CheckpointConfig:
    every_steps: int = 1000
    keep_last: int = 3


@dataclass
class CollapseConfig:
    """A monitor flags collapse when a statistic leaves its band (checked every `monitor_every`)."""

    after_step: int = 0  # no checks before (random-init features are near-constant at first)
    min_feature_std: float = 0.01  # per-dimension std of teacher CLS features across the batch
    min_teacher_entropy: float = 0.1  # nats; near 0 = one prototype wins everywhere
    max_teacher_entropy_fraction: float = 0.99  # of log(K); near 1 = uniform targets
    max_center_norm: float = 100.0


@dataclass
class LogConfig:
    every_steps: int = 10
    monitor_every_steps: int = 50
    tensorboard: bool = True
    progress_bar: bool = True
    collapse: CollapseConfig = field(default_factory=CollapseConfig)


@dataclass
class DistributedConfig:
    strategy: str = "ddp"  # ddp | fsdp (FSDP2 fully_shard: student and teacher blocks sharded)
    backend: str = "auto"  # auto (nccl on CUDA, gloo on CPU) | nccl | gloo
    find_unused_parameters: bool = False


@dataclass
class ExportConfig:
    at_end: bool = True
    formats: list[str] = field(default_factory=lambda: ["hf", "official"])


@dataclass
class PretrainConfig:
    output_dir: str = "outputs/pretrain"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    ssl: SSLConfig = field(default_factory=SSLConfig)

    def validate(self) -> None:
        checks = [
            (self.train.steps > 0, "train.steps must be > 0"),
            (self.data.batch_size > 0, "data.batch_size must be > 0"),
            (self.checkpoint.every_steps > 0, "checkpoint.every_steps must be > 0"),
            (self.checkpoint.keep_last > 0, "checkpoint.keep_last must be > 0"),
            (self.train.max_nonfinite_steps > 0, "train.max_nonfinite_steps must be > 0"),
            (self.train.precision in ("auto", "bf16", "fp16", "fp32"), "train.precision must be auto|bf16|fp16|fp32"),
            (self.distributed.strategy in ("ddp", "fsdp"), "distributed.strategy must be ddp|fsdp"),
            (self.distributed.backend in ("auto", "nccl", "gloo"), "distributed.backend must be auto|nccl|gloo"),
            (set(self.export.formats) <= {"hf", "official"}, "export.formats may only hold 'hf' and 'official'"),
        ]
        errors = [message + f" (got {self._describe(message)})" for ok, message in checks if not ok]
        if self.train.stop_at_step is not None and not 0 < self.train.stop_at_step <= self.train.steps:
            errors.append(f"train.stop_at_step must be in 1..train.steps={self.train.steps} (got {self.train.stop_at_step})")
        if errors:
            raise ValueError("invalid pretraining config:\n  " + "\n  ".join(errors))
        self.ssl.validate()

    def _describe(self, message: str) -> str:
        key = message.split()[0]
        return repr(get_dotted(self.to_dict(), key))

    def to_dict(self) -> dict[str, Any]:
        """Plain python types (for checkpoints, YAML dumps and comparison on resume)."""
        return draccus.encode(self)


# ------------------------------------------------------------------ loading
def preset_path(name: str) -> Path:
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"unknown preset {name!r}; available presets in {PRESET_DIR}: {available}")
    return path


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> PretrainConfig:
    """YAML file (or the defaults when None) + dotted overrides → a validated PretrainConfig."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        loaded = yaml.safe_load(path.read_text())
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping at the top level, got {type(loaded).__name__}")
        raw = loaded or {}
    for key, value in (overrides or {}).items():
        set_dotted(raw, key, value)
    try:
        config = draccus.decode(PretrainConfig, raw)
    except Exception as error:  # draccus names the offending dotted key
        source = f"{path}" if path is not None else "defaults"
        raise ValueError(f"bad pretraining config ({source} + overrides): {error}") from error
    config.validate()
    return config


def parse_override_value(text: str) -> Any:
    """A command-line value as YAML (`1e-4`, `true`, `null`, `[a, b]`, `{k: v}`); draccus then
    converts it to the field's declared type."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    if not all(parts):
        raise ValueError(f"bad override key {key!r}; expected a dotted path like ssl.optim.base_lr")
    node = tree
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ValueError(f"override {key!r}: {'.'.join(parts[: depth + 1])} is a value, not a section")
        node = child
    node[parts[-1]] = value


def get_dotted(tree: dict[str, Any], key: str) -> Any:
    node: Any = tree
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def dump_config(config: PretrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
