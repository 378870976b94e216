"""`SSLTrainer`: one DINOv2 optimisation step, the only place it is written.

    schedules → forward (autocast) → non-finite guard → backward (grad scaler) → clip → AdamW → EMA teacher

The pretraining loop, the benchmarks and the tests all call `SSLTrainer.step`, so what they
time and test is the step the loop runs.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Callable

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
    grad_norm: torch.Tensor  # total norm before clipping; nan when the loss was non-finite (no backward)
    finite: bool  # False: the step was skipped (no update, no EMA)
    schedule: dict[str, float]  # lr, last_layer_lr, weight_decay, momentum, teacher_temp of this step


class SSLTrainer:
    """Owns the AdamW optimiser over `model.param_groups()` and the grad scaler (fp16 only).

    `forward`: the module to call forward on (a DDP / FSDP wrapper of `model`; default `model`).
    `any_rank`: True on every rank when true on any, so all ranks skip a non-finite step
    together (default: this process alone).
    """

    def __init__(
        self,
        model: SSLModel,
        precision: str = "fp32",
        forward: nn.Module | None = None,
        any_rank: Callable[[bool], bool] | None = None,
    ) -> None:
        device = next(model.parameters()).device
        precision = resolve_dtype(precision, device, flag="precision")
        self.model = model
        self.forward = forward if forward is not None else model
        self.any_rank = any_rank or (lambda flag: flag)
        # lr and weight decay are placeholders: apply_schedules sets both on every group each step
        self.optimizer = torch.optim.AdamW(model.param_groups(), lr=0.0, weight_decay=0.0, betas=tuple(model.config.optim.betas))
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.autocast: AbstractContextManager = autocast(precision, device)

    def step(self, crops: MultiCropBatch, step: int) -> StepResult:
        model, optimizer, scaler = self.model, self.optimizer, self.scaler
        schedule = model.apply_schedules(optimizer, step)
        with self.autocast:
            output = self.forward(crops, step)
        loss = output.loss
        finite = not self.any_rank(not bool(torch.isfinite(loss.detach())))
        grad_norm = torch.tensor(float("nan"))
        if finite:
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            grad_norm = model.clip_gradients()
            # fp16: inf gradients are the scaler's business (it skips and lowers the scale)
            finite = scaler.is_enabled() or bool(torch.isfinite(grad_norm))
            if finite:
                scaler.step(optimizer)
                scaler.update()
                model.update_teacher(step)
            optimizer.zero_grad(set_to_none=True)
        return StepResult(loss.detach(), output.metrics, grad_norm, finite, schedule)
