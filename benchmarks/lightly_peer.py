"""The peer implementation the SSL benchmarks compare against: one DINOv2 training step written
like lightly's `examples/pytorch/dinov2.py` (lightly 1.6: DINOLoss, IBOTPatchLoss, KoLeoLoss,
DINOv2ProjectionHead, update_momentum) around the same transformers Dinov2Model that
`vla_dino.encoder.DinoEncoder` wraps.

Shared by `bench_ssl_step.py` (step time / memory) and `ssl_peer_training.py` (does it learn).
The project does not depend on lightly: `pip install --no-deps lightly` is enough (only
lightly.loss / lightly.models are imported, and only when a `LightlyStep` is built).

What is lightly's and what is ours, so a comparison is fair:
- lightly's: the losses (softmax centring with lightly's own EMA centres for DINO and iBOT), the
  head (`DINOv2ProjectionHead`: its weight-normalised last layer keeps a *trainable* gain, as
  DINOv2 upstream; `vla_dino`'s head freezes it at 1), a flat AdamW parameter list (weight decay
  on every parameter, no layer decay) and `update_momentum`, as in the example;
- taken from our `SSLConfig` / `SSLSchedules`, like the example's scheduler calls but with our
  values: lr (warm-up + cosine, batch-scaled like ours), weight decay (cosine), teacher
  temperature (linear warm-up), EMA momentum (cosine), the last-layer freeze steps, gradient
  clipping (over all student parameters), head sizes, prototypes, temperatures, loss weights.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

from vla_dino.encoder import DinoEncoder
from vla_dino.ssl import MultiCropBatch, SSLConfig
from vla_dino.ssl.heads import DinoHead
from vla_dino.ssl.schedules import SSLSchedules, scaled_lr


def copy_dino_head_into_lightly(ours: DinoHead, peer: torch.nn.Module) -> None:
    """Give a lightly `DINOv2ProjectionHead` the initial weights of one of our `DinoHead`s:
    the MLP layer for layer, the prototypes as weight_norm's direction `v` with gain g = 1
    (the same function at init: g · v / ‖v‖ = our normalised prototypes)."""
    with torch.no_grad():
        ours_linear = [m for m in ours.mlp if isinstance(m, torch.nn.Linear)]
        peer_linear = [m for m in peer.layers if isinstance(m, torch.nn.Linear)]
        if len(ours_linear) != len(peer_linear):
            raise ValueError(f"head depth differs: ours {len(ours_linear)} linear layers, lightly {len(peer_linear)}")
        for a, b in zip(ours_linear, peer_linear):
            b.weight.copy_(a.weight)
            b.bias.copy_(a.bias)
        peer.last_layer.weight_v.copy_(ours.last_layer.weight)
        peer.last_layer.weight_g.fill_(1.0)


class LightlyStep:
    """lightly's examples/pytorch/dinov2.py step with a transformers Dinov2Model backbone.

    `encoder` becomes the student (it is trained in place); the teacher is a deep copy. With
    `init_head` (one of our `DinoHead`s) the lightly head starts from its weights. Calling the
    object runs one step and returns the total loss; `last_metrics` holds that step's terms:
    loss, dino, ibot, koleo (unweighted sum over the two global crops), teacher_entropy (of
    softmax((t − c)/τ_t) with DINOLoss's centre c before its update, mean over the 2B global
    crops), dino_kl (mean over global crops of H(t_other crop, s) − H(t)), teacher_temp, lr,
    momentum, head_gain (mean weight_norm gain of the student head's prototypes).
    """

    name = "lightly 1.6 losses"

    def __init__(self, encoder: DinoEncoder, config: SSLConfig, steps: int, init_head: DinoHead | None = None) -> None:
        from lightly.loss import DINOLoss, IBOTPatchLoss, KoLeoLoss
        from lightly.models.modules import DINOv2ProjectionHead

        config.validate()
        if not config.heads.shared_ibot:
            raise ValueError("LightlyStep follows lightly's example with ibot_separate_head=False; set heads.shared_ibot=true")
        device = next(encoder.parameters()).device
        heads, loss = config.heads, config.loss
        self.config = config
        self.student_backbone = encoder.model
        self.teacher_backbone = copy.deepcopy(encoder.model).requires_grad_(False).eval()

        def head() -> torch.nn.Module:
            return DINOv2ProjectionHead(encoder.hidden_size, heads.hidden_dim, heads.bottleneck_dim, heads.num_prototypes).to(device)

        self.student_head = head()
        if init_head is not None:
            copy_dino_head_into_lightly(init_head, self.student_head)
        self.teacher_head = head().requires_grad_(False).eval()  # old-style weight_norm: no deepcopy
        self.teacher_head.load_state_dict(self.student_head.state_dict())
        self.dino = DINOLoss(output_dim=heads.num_prototypes, student_temp=loss.student_temp,
                             center_momentum=loss.center_momentum).to(device)
        self.ibot = IBOTPatchLoss(output_dim=heads.num_prototypes, student_temp=loss.student_temp,
                                  center_momentum=loss.center_momentum).to(device)
        self.koleo = KoLeoLoss().to(device)
        last = list(self.student_head.last_layer.parameters())
        last_ids = {id(p) for p in last}
        rest = [p for p in list(self.student_backbone.parameters()) + list(self.student_head.parameters()) if id(p) not in last_ids]
        # The example's AdamW(model.parameters()): one flat list, weight decay everywhere; the last
        # layer in its own group so that its lr can be 0 during the freeze (the example means to).
        self.optimizer = torch.optim.AdamW(
            [{"params": rest, "is_last_layer": False}, {"params": last, "is_last_layer": True}],
            lr=0.0, weight_decay=config.optim.weight_decay[0], betas=tuple(config.optim.betas),
        )
        self.params = rest + last
        self.grid = config.crops.global_size // encoder.patch_size
        batch = config.optim.batch_size
        if batch is None:
            raise ValueError("LightlyStep needs config.optim.batch_size for the lr scaling")
        self.schedules = SSLSchedules(steps, scaled_lr(config.optim.base_lr, config.optim.lr_scaling, batch), config)
        self.last_metrics: dict[str, float] = {}

    def _apply_schedules(self, step: int) -> tuple[float, float]:
        s = self.schedules
        lr, wd = s.lr(step), s.weight_decay(step)
        for group in self.optimizer.param_groups:
            group["lr"] = s.last_layer_lr(step) if group["is_last_layer"] else lr
            if group["weight_decay"] != 0.0:  # as the example: the schedule on every decayed group
                group["weight_decay"] = wd
        return lr, s.teacher_temp(step)

    def __call__(self, batch: MultiCropBatch, step: int) -> float:
        from lightly.models.utils import update_momentum

        cfg = self.config.loss
        lr, teacher_temp = self._apply_schedules(step)
        views = batch.global_crops.shape[0] // batch.batch_size + batch.num_local
        mask = batch.masks
        with torch.no_grad():
            teacher = self.teacher_backbone(batch.global_crops).last_hidden_state
            teacher_cls_out = self.teacher_head(teacher[:, 0])
            teacher_masked_out = self.teacher_head(teacher[:, 1:][mask])
            targets = F.softmax((teacher_cls_out.float() - self.dino.center.view(1, -1)) / teacher_temp, dim=-1)
        student = self.student_backbone(batch.global_crops, bool_masked_pos=mask).last_hidden_state
        student_global_cls_out = self.student_head(student[:, 0])
        student_masked_out = self.student_head(student[:, 1:][mask])
        if batch.num_local:
            student_local = self.student_backbone(batch.local_crops).last_hidden_state
            student_cls_out = torch.cat([student_global_cls_out, self.student_head(student_local[:, 0])])
        else:
            student_cls_out = student_global_cls_out
        dino = self.dino(teacher_out=list(teacher_cls_out.chunk(2)), student_out=list(student_cls_out.chunk(views)),
                         teacher_temp=teacher_temp)
        ibot = self.ibot(teacher_out=teacher_masked_out, student_out=student_masked_out,
                         mask=mask.view(-1, self.grid, self.grid), teacher_temp=teacher_temp)
        koleo = sum(self.koleo(t) for t in student[:, 0].chunk(2))
        loss = cfg.dino_weight * dino + cfg.ibot_weight * ibot + cfg.koleo_weight * koleo
        loss.backward()
        max_norm = self.config.optim.clip_grad if self.config.optim.clip_grad > 0 else math.inf
        torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        momentum = self.schedules.momentum(step)
        update_momentum(self.student_backbone, self.teacher_backbone, m=momentum)
        update_momentum(self.student_head, self.teacher_head, m=momentum)
        with torch.no_grad():
            entropy = -(targets * torch.log(targets.clamp(min=1e-12))).sum(-1).mean()
            swapped = targets.view(2, -1, targets.shape[-1]).flip(0).reshape_as(targets)
            log_probs = F.log_softmax(student_global_cls_out.detach().float() / cfg.student_temp, dim=-1)
            kl = -(swapped * log_probs).sum(-1).mean() - entropy
            gain = self.student_head.last_layer.weight_g.detach().float().mean()
        self.last_metrics = {
            "loss": float(loss.detach()), "dino": float(dino.detach()), "ibot": float(ibot.detach()),
            "koleo": float(koleo.detach()), "teacher_entropy": float(entropy), "dino_kl": float(kl),
            "teacher_temp": float(teacher_temp), "lr": float(lr), "momentum": float(momentum), "head_gain": float(gain),
        }
        return self.last_metrics["loss"]
