"""Per-step schedules (pure functions of the step) for lr, weight decay, teacher temperature,
EMA momentum and last-layer freezing, laid out over `total_steps` like upstream's
`CosineScheduler`."""

from __future__ import annotations

import math
from dataclasses import dataclass

from vla_dino.ssl.config import SSLConfig


def warmup_cosine(step: int, total_steps: int, base: float, final: float, warmup_steps: int = 0, start: float = 0.0) -> float:
    """Linear `start → base` over `warmup_steps` (value start + (base − start)·step/W), then
    cosine `base → final` over the remaining steps: final + ½(base − final)(1 + cos(π·i/n)),
    i = step − W, n = total − W; `final` from `total_steps` on."""
    if step >= total_steps:
        return final
    if step < warmup_steps:
        return start + (base - start) * step / warmup_steps
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    return final + 0.5 * (base - final) * (1.0 + math.cos(math.pi * progress))


def linear_warmup(step: int, warmup_steps: int, start: float, end: float) -> float:
    """Linear `start → end` over `warmup_steps`, then constant `end`."""
    if step >= warmup_steps:
        return end
    return start + (end - start) * step / warmup_steps


@dataclass
class SSLSchedules:
    """All schedule values at a step; `peak_lr` is the already batch-scaled lr."""

    total_steps: int
    peak_lr: float
    config: SSLConfig

    def __post_init__(self) -> None:
        if self.total_steps <= 0:
            raise ValueError(f"total_steps {self.total_steps}; expected > 0")

    @property
    def warmup_steps(self) -> int:
        return round(self.config.optim.warmup_fraction * self.total_steps)

    @property
    def freeze_last_layer_steps(self) -> int:
        steps = self.config.optim.freeze_last_layer_steps
        return round(0.01 * self.total_steps) if steps is None else steps

    def lr(self, step: int) -> float:
        optim = self.config.optim
        return warmup_cosine(step, self.total_steps, self.peak_lr, optim.min_lr, self.warmup_steps)

    def last_layer_lr(self, step: int) -> float:
        return 0.0 if step < self.freeze_last_layer_steps else self.lr(step)

    def backbone_frozen(self, step: int) -> bool:
        return step < self.config.continued.head_warmup_steps

    def weight_decay(self, step: int) -> float:
        start, end = self.config.optim.weight_decay
        return warmup_cosine(step, self.total_steps, start, end)

    def momentum(self, step: int) -> float:
        start, end = self.config.schedules.momentum
        return warmup_cosine(step, self.total_steps, start, end)

    def teacher_temp(self, step: int) -> float:
        schedules = self.config.schedules
        start, end = schedules.teacher_temp
        return linear_warmup(step, round(schedules.teacher_temp_warmup_fraction * self.total_steps), start, end)


def scaled_lr(base_lr: float, rule: str, global_batch: int) -> float:
    """`sqrt_wrt_1024`: base_lr · sqrt(global_batch / 1024) (DINOv2); `none`: base_lr."""
    if rule == "sqrt_wrt_1024":
        return base_lr * math.sqrt(global_batch / 1024)
    if rule == "none":
        return base_lr
    raise ValueError(f"lr scaling rule {rule!r}; expected 'sqrt_wrt_1024' or 'none'")
