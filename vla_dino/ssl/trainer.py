"""`SSLTrainer`: one DINOv2 optimisation step, the only place it is written.

    schedules → forward (autocast) → backward → clip → non-finite guard → fused AdamW → EMA teacher

The pretraining loop, the benchmarks and the tests all call `SSLTrainer.step`, so what they
time and test is the step the loop runs.

The step never waits for the device (fp32 / bf16): a non-finite loss or gradient norm becomes a
device flag (all-reduced across ranks without a host read) that the fused AdamW kernel reads as
`found_inf` (the mechanism torch's GradScaler uses) and that zeroes the EMA weight, so a bad
step leaves weights, optimiser state and teacher exactly as they were. With `max_nonfinite_steps`
the device also counts consecutive bad steps and, once they reach the limit, skips every later
step until `set_nonfinite_streak` resets it: a caller that reads each step's values one step late
(`StepResult.to_host` while the next step runs) can stop on the limit with nothing applied since
the last good step. fp16 keeps torch's GradScaler, whose scale update reads its own flag on the host.

`compile`: `nn.Module.compile` of the student and the teacher (backbone + heads, in place, so
state-dict keys do not change); losses, targets and the optimiser stay eager.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from vla_dino.device import autocast, resolve_dtype
from vla_dino.ssl.augment import MultiCropBatch
from vla_dino.ssl.model import SSLModel


@dataclass
class StepResult:
    """What one step did. Tensors stay on the device (reading one is a host sync): callers
    convert them when they log."""

    loss: torch.Tensor  # scalar, detached weighted total
    metrics: dict[str, torch.Tensor]  # detached scalars of SSLOutput
    grad_norm: torch.Tensor  # total norm before clipping (nan when the loss was non-finite)
    finite: torch.Tensor  # bool scalar; False: non-finite loss or gradients, the step was skipped (no update, no EMA)
    schedule: dict[str, float]  # lr, last_layer_lr, weight_decay, momentum, teacher_temp of this step

    def to_host(self) -> "HostCopy":
        """Start copying every scalar to the host without waiting (one stacked tensor, one copy; on CUDA
        into pinned memory behind an event); `HostCopy.wait()` returns them as Python numbers."""
        names = list(self.metrics)
        values = torch.stack([self.finite.float(), self.loss.float(), self.grad_norm.float(),
                              *(self.metrics[n].float() for n in names)])
        if values.device.type != "cuda":
            return HostCopy(values, names, self.schedule, event=None)
        host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
        host.copy_(values, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return HostCopy(host, names, self.schedule, event)


@dataclass
class StepValues:
    """A step's `StepResult` on the host."""

    finite: bool
    loss: float
    grad_norm: float
    metrics: dict[str, float]
    schedule: dict[str, float]


@dataclass
class HostCopy:
    """A `StepResult` on its way to the host: `wait()` blocks until that step's values have arrived,
    not for the work queued after it."""

    values: torch.Tensor
    names: list[str]
    schedule: dict[str, float]
    event: torch.cuda.Event | None

    def wait(self) -> StepValues:
        if self.event is not None:
            self.event.synchronize()
        finite, loss, grad_norm, *metrics = self.values.tolist()
        return StepValues(bool(finite), loss, grad_norm, dict(zip(self.names, metrics)), self.schedule)


class SSLTrainer:
    """Owns the fused AdamW optimiser over `model.param_groups()` and the grad scaler (fp16 only).

    `forward`: the module to call forward on (a DDP / FSDP wrapper of `model`; default `model`).
    `any_rank`: a bool tensor that is True on every rank when True on any (an all-reduce, no host
    read), so all ranks skip a non-finite step together (default: this process alone).
    `max_nonfinite_steps`: after this many consecutive non-finite steps every later step is skipped
    on the device too (None: never).
    `compile`: keyword arguments of `torch.compile` (`mode`, `backend`, …) for student and teacher;
    None leaves them eager.
    """

    def __init__(
        self,
        model: SSLModel,
        precision: str = "fp32",
        forward: nn.Module | None = None,
        any_rank: Callable[[torch.Tensor], torch.Tensor] | None = None,
        max_nonfinite_steps: int | None = None,
        compile: dict[str, Any] | None = None,
    ) -> None:
        device = next(model.parameters()).device
        precision = resolve_dtype(precision, device, flag="precision")
        self.model = model
        self.forward = forward if forward is not None else model
        self.any_rank = any_rank or (lambda flag: flag)
        # lr and weight decay are placeholders: apply_schedules sets both on every group each step. Fused: one
        # kernel for all parameters, and it skips a step on the device flag `found_inf` without a host read.
        self.optimizer = torch.optim.AdamW(model.param_groups(), lr=0.0, weight_decay=0.0,
                                           betas=tuple(model.config.optim.betas), fused=True)
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.autocast: AbstractContextManager = autocast(precision, device)
        self.max_nonfinite_steps = max_nonfinite_steps
        self._streak = torch.zeros((), dtype=torch.int32, device=device)  # consecutive non-finite steps
        self._halted = torch.zeros((), dtype=torch.bool, device=device)  # the streak reached the limit
        if compile is not None:
            # the teacher runs under no_grad, the student with grad: two graphs of one forward
            model.student.compile(**compile)
            model.teacher.compile(**compile)

    def set_nonfinite_streak(self, streak: int) -> None:
        """Continue counting from `streak` (a resumed run's guard) with no halt in force."""
        self._streak.fill_(streak)
        self._halted.fill_(False)

    def step(self, crops: MultiCropBatch, step: int) -> StepResult:
        model, optimizer = self.model, self.optimizer
        schedule = model.apply_schedules(optimizer, step)
        with self.autocast:
            output = self.forward(crops, step)
        if self.scaler.is_enabled():
            return self._fp16_step(output.loss, output.metrics, step, schedule)
        loss = output.loss.detach()
        optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        grad_norm = model.clip_gradients()
        bad = self.any_rank(~(torch.isfinite(loss) & torch.isfinite(grad_norm)))
        skip = bad | self._halted
        optimizer.found_inf = skip.float()  # read by the fused kernel: no update, step count unchanged
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.update_teacher(step, skip=skip)
        self._count_nonfinite(bad)
        return StepResult(loss, output.metrics, grad_norm, ~bad, schedule)

    def _count_nonfinite(self, bad: torch.Tensor) -> None:
        if self.max_nonfinite_steps is None:
            return
        self._streak = torch.where(bad, self._streak + 1, torch.zeros_like(self._streak))
        self._halted |= self._streak >= self.max_nonfinite_steps

    def _fp16_step(self, loss: torch.Tensor, metrics: dict[str, torch.Tensor], step: int, schedule: dict[str, float]) -> StepResult:
        """fp16 with torch's GradScaler: a non-finite loss skips the step here; inf gradients are the scaler's
        business (it skips the update and lowers the scale)."""
        model, optimizer, scaler = self.model, self.optimizer, self.scaler
        finite = ~self.any_rank(~torch.isfinite(loss.detach()))
        grad_norm = torch.full((), float("nan"), device=loss.device)
        skip = ~finite | self._halted
        if not bool(skip):
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            grad_norm = model.clip_gradients()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
        model.update_teacher(step, skip=skip)
        self._count_nonfinite(~finite)
        return StepResult(loss.detach(), metrics, grad_norm, finite, schedule)
