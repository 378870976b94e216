"""The pretraining run's configuration: nested dataclasses, filled from a YAML preset plus
command-line overrides. The recipe (every number) lives in `configs/pretrain/*.yaml`, whose
`ssl:` section inherits DINOv2's recipe from `configs/ssl/dinov2_default.yaml` (`base:`) and
lists only what differs; the defaults below only make a config complete when a file leaves a
field out.

Overrides use dotted paths into this tree, e.g. `ssl.optim.base_lr=1e-4` or
`train.steps=100`; an unknown path is an error that names it. Files, `base:` and overrides are
read by `vla_dino.configs.loader`, the one loader of every config in the package.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import draccus
import yaml

from vla_dino.configs import PRETRAIN_DIR
from vla_dino.configs.loader import get_dotted, load
from vla_dino.device import COMPILE_MODES
from vla_dino.ssl.config import SSLConfig

_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def _finite(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


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
    # Frames whose shorter side is below this are left out (counted as unreadable), not enlarged.
    min_frame_side: int = 32
    # Open every image file's header at start-up, so non-images are counted before training.
    check_files: bool = True
    # cpu: the DataLoader workers decode every frame; cuda (on a CUDA device): they read JPEG files' bytes and the
    # training process decodes each batch with nvJPEG (other formats stay with the workers)
    decode_device: str = "cpu"
    # A folder: every source decoded once, in order, into it at frame_size (3·frame_size² bytes a frame), and read
    # from there (decode_device then has nothing left to decode); later runs reuse what is unchanged, entries of
    # changed sources stay until the folder is deleted. Pays off most for videos, where a random read decodes
    # from the keyframe before it. None: decode every read.
    frame_cache: str | None = None


@dataclass
class TrainConfig:
    steps: int = 1000  # total optimiser steps; schedules are laid out over these
    stop_at_step: int | None = None  # stop early (with a checkpoint) to fit a job's time slot
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp16 | fp32
    max_nonfinite_steps: int = 5  # consecutive NaN/inf steps before the run stops
    # torch.compile of student and teacher (backbone + heads): faster steps on a GPU after a compile of
    # a minute or more at the first steps (and once more when the number of masked patches first changes)
    compile: bool = False
    compile_mode: str = "default"  # default | reduce-overhead | max-autotune | max-autotune-no-cudagraphs
    # Consecutive batches without enough readable frames before the run stops (with a
    # checkpoint); a whole epoch of them stops it sooner.
    max_empty_batches: int = 50

    def compile_options(self) -> dict[str, Any] | None:
        """`torch.compile` keyword arguments for `SSLTrainer`, None when compile is off."""
        return {"mode": self.compile_mode} if self.compile else None


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
    # Near-uniform targets the student already matches: entropy above this fraction of log(K) with
    # the student–teacher KL below `flat_kl` nats, for `persist_checks` checks in a row. Not a
    # collapse of the features, but the objective then gives the backbone almost no signal.
    near_uniform_fraction: float = 0.95
    flat_kl: float = 0.02
    persist_checks: int = 3


@dataclass
class LogConfig:
    every_steps: int = 10
    monitor_every_steps: int = 50
    tensorboard: bool = True
    progress_bar: bool = True
    collapse: CollapseConfig = field(default_factory=CollapseConfig)
    # A frozen probe of the teacher on held-out episodes of the run's own frames (vla_dino.pretrain.probe):
    # every N steps (0: off). Those episodes are left out of training.
    probe_every_steps: int = 0
    probe_holdout_fraction: float = 0.1  # share of the sources (episode × camera) held out, at least one
    probe_max_frames: int = 256  # held-out frames probed, evenly spaced over the held-out sources
    probe_window: int = 2  # a retrieval hit: the same episode within ±window frames
    probe_patience: int = 5  # warn after this many probes without improvement
    probe_max_drop: float = 0.05  # warn when the probe falls this far below its best
    probe_metric: str = "probe/retrieval_changed"  # what the probe monitor watches (or "probe/rankme")


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
        """Raises ValueError listing every bad field with its value (the SSL tree's own checks after)."""
        t, d, o, lo, sc, h, c = self.train, self.data, self.ssl.optim, self.ssl.loss, self.ssl.schedules, self.ssl.heads, self.ssl.crops
        checks = [
            (t.steps > 0, "train.steps must be > 0"),
            (d.batch_size > 0, "data.batch_size must be > 0"),
            (d.num_workers >= 0, "data.num_workers must be >= 0"),
            (d.frame_size > 0, "data.frame_size must be > 0"),
            (d.stride >= 1, "data.stride must be >= 1"),
            (d.neighbor_offset >= 0, "data.neighbor_offset must be >= 0"),
            (d.min_frame_side >= 1, "data.min_frame_side must be >= 1"),
            (d.decode_device in ("cpu", "cuda"), "data.decode_device must be cpu|cuda"),
            (self.checkpoint.every_steps > 0, "checkpoint.every_steps must be > 0"),
            (self.checkpoint.keep_last > 0, "checkpoint.keep_last must be > 0"),
            (t.max_nonfinite_steps > 0, "train.max_nonfinite_steps must be > 0"),
            (t.max_empty_batches > 0, "train.max_empty_batches must be > 0"),
            (t.precision in ("auto", "bf16", "fp16", "fp32"), "train.precision must be auto|bf16|fp16|fp32"),
            (t.compile_mode in COMPILE_MODES, "train.compile_mode must be " + "|".join(COMPILE_MODES)),
            (_DEVICE.fullmatch(t.device) is not None, "train.device must be auto|cpu|cuda|cuda:N|mps"),
            (self.log.every_steps > 0, "log.every_steps must be > 0"),
            (self.log.monitor_every_steps > 0, "log.monitor_every_steps must be > 0"),
            (self.log.probe_every_steps >= 0, "log.probe_every_steps must be >= 0 (0 turns the probe off)"),
            (0 < self.log.probe_holdout_fraction < 1, "log.probe_holdout_fraction must be in (0, 1)"),
            (self.log.probe_max_frames >= 2, "log.probe_max_frames must be >= 2"),
            (self.log.probe_window >= 0, "log.probe_window must be >= 0"),
            (self.log.probe_patience >= 1, "log.probe_patience must be >= 1"),
            (self.log.probe_metric in ("probe/retrieval_changed", "probe/rankme"),
             "log.probe_metric must be probe/retrieval_changed or probe/rankme"),
            (self.log.collapse.persist_checks >= 1, "log.collapse.persist_checks must be >= 1"),
            (self.distributed.strategy in ("ddp", "fsdp"), "distributed.strategy must be ddp|fsdp"),
            (self.distributed.backend in ("auto", "nccl", "gloo"), "distributed.backend must be auto|nccl|gloo"),
            (not (o.pack_crops and self.distributed.strategy == "fsdp"),
             "ssl.optim.pack_crops runs the blocks' parts directly, past FSDP2's per-block hooks: use distributed.strategy=ddp"),
            (set(self.export.formats) <= {"hf", "official"}, "export.formats may only hold 'hf' and 'official'"),
            # numbers the SSL tree's own validate() leaves open
            (_finite(o.base_lr) and o.base_lr > 0, "ssl.optim.base_lr must be > 0"),
            (_finite(o.min_lr) and o.min_lr >= 0, "ssl.optim.min_lr must be >= 0"),
            (all(_finite(v) and v >= 0 for v in o.weight_decay), "ssl.optim.weight_decay must be >= 0 (from, to)"),
            (_finite(o.layer_decay) and 0 < o.layer_decay <= 1, "ssl.optim.layer_decay must be in (0, 1]"),
            (_finite(o.patch_embed_lr_mult) and o.patch_embed_lr_mult >= 0, "ssl.optim.patch_embed_lr_mult must be >= 0"),
            (all(_finite(b) and 0 <= b < 1 for b in o.betas), "ssl.optim.betas must be in [0, 1)"),
            (_finite(o.clip_grad), "ssl.optim.clip_grad must be a finite number (<= 0: no clipping)"),
            (o.freeze_last_layer_steps is None or o.freeze_last_layer_steps >= 0, "ssl.optim.freeze_last_layer_steps must be >= 0"),
            (all(_finite(v) and v > 0 for v in sc.teacher_temp), "ssl.schedules.teacher_temp must be > 0 (from, to)"),
            (all(_finite(v) and 0 <= v <= 1 for v in sc.momentum), "ssl.schedules.momentum must be in [0, 1] (from, to)"),
            *((_finite(getattr(lo, k)) and getattr(lo, k) >= 0, f"ssl.loss.{k} must be >= 0")
              for k in ("dino_weight", "ibot_weight", "koleo_weight")),
            (lo.sinkhorn_iterations >= 1, "ssl.loss.sinkhorn_iterations must be >= 1"),
            (0 <= lo.center_momentum < 1, "ssl.loss.center_momentum must be in [0, 1)"),
            *((getattr(h, k) > 0, f"ssl.heads.{k} must be > 0") for k in ("hidden_dim", "bottleneck_dim", "num_prototypes")),
            (h.ibot_num_prototypes is None or h.ibot_num_prototypes > 0, "ssl.heads.ibot_num_prototypes must be > 0 (or null)"),
            *((0 <= getattr(c, k) <= 1, f"ssl.crops.{k} must be in [0, 1]") for k in
              ("jitter_prob", "grayscale_prob", "blur_prob_global1", "blur_prob_global2", "blur_prob_local", "solarize_prob_global2")),
        ]
        errors = [message + f" (got {self._describe(message)})" for ok, message in checks if not ok]
        if self.train.stop_at_step is not None and not 0 < self.train.stop_at_step <= self.train.steps:
            errors.append(f"train.stop_at_step must be in 1..train.steps={self.train.steps} (got {self.train.stop_at_step})")
        if lo.koleo_weight > 0 and d.batch_size < 2:
            errors.append(
                f"data.batch_size must be >= 2 while ssl.loss.koleo_weight > 0 (got batch {d.batch_size}, weight "
                f"{lo.koleo_weight}): KoLeo compares each frame with its nearest neighbour in the batch; "
                "raise --batch-size or set ssl.loss.koleo_weight=0"
            )
        if len(errors) == 1:
            raise ValueError(f"invalid pretraining config: {errors[0]}")
        if errors:
            raise ValueError(f"invalid pretraining config ({len(errors)} problems):\n  " + "\n  ".join(errors))
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
    return load(PretrainConfig, path, overrides, what="pretraining config")


def dump_config(config: PretrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
