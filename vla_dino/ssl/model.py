"""`SSLModel`: DINOv2's student/teacher pair with heads, losses, EMA and schedules."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn
from transformers.models.dinov2.modeling_dinov2 import Dinov2DropPath

from vla_dino.encoder import DinoEncoder
from vla_dino.ssl.augment import MultiCropBatch
from vla_dino.ssl.centering import TeacherTargets, joint_targets
from vla_dino.ssl.config import SSLConfig
from vla_dino.ssl.dist import world_size
from vla_dino.ssl.heads import DinoHead
from vla_dino.ssl.losses import dino_loss, gram_loss, ibot_loss, koleo_loss
from vla_dino.ssl.param_groups import param_groups
from vla_dino.ssl.schedules import SSLSchedules, scaled_lr


@dataclass
class NetworkOutput:
    global_cls: torch.Tensor  # (2B, D) final-normed, pre-head
    global_patches: torch.Tensor  # (2B, P, D)
    dino_global: torch.Tensor  # (2B, K)
    dino_local: torch.Tensor | None  # (L·B, K)
    ibot: torch.Tensor | None  # at the M masked positions: logits (M, K), or bottleneck features (M, d) (`ibot_features`)
    ibot_prototypes: torch.Tensor | None = None  # (K, d) the iBOT head's normalised last layer, with `ibot_features`


class SSLNetwork(nn.Module):
    """Backbone + DINO head (+ separate iBOT head). One forward call per step, so DDP sees
    a single forward; the teacher is a deep copy of this module."""

    def __init__(
        self, backbone: DinoEncoder, dino_head: DinoHead, ibot_head: DinoHead | None, pack_crops: bool = False
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.dino_head = dino_head
        self.ibot_head = ibot_head
        self.pack_crops = pack_crops  # optim.pack_crops: global and local crops in one backbone pass

    def forward(
        self,
        global_crops: torch.Tensor,
        local_crops: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
        mask_index: torch.Tensor | None = None,
        ibot_features: bool = False,
    ) -> NetworkOutput:
        """`ibot_features`: return the masked patches' bottleneck features and the iBOT prototypes instead of
        their (M, K) logits, for `ibot_loss`, which forms the logits chunk by chunk (the student's path)."""
        has_local = local_crops is not None and local_crops.numel() > 0
        if self.pack_crops and has_local:
            glob, local = self.backbone.forward_packed([global_crops, local_crops], [masks, None])
            local_cls = local.cls_token
        else:
            glob = self.backbone(global_crops, bool_masked_pos=masks)
            local_cls = self.backbone(local_crops).cls_token if has_local else None
        patches = None
        if mask_index is not None:
            patches = glob.patch_tokens.flatten(0, 1).index_select(0, mask_index)
        # One head call over all inputs of the shared head (fewer, larger matmuls).
        cls_tokens = [x for x in (local_cls, glob.cls_token) if x is not None]
        shared_patches = patches is not None and self.ibot_head is None
        inputs = cls_tokens + [patches] if shared_patches else cls_tokens
        features = self.dino_head.bottleneck(torch.cat(inputs)).split([x.shape[0] for x in inputs])
        dino = self.dino_head.last_layer(torch.cat(features[: len(cls_tokens)])).split([x.shape[0] for x in cls_tokens])
        dino_local = dino[0] if local_cls is not None else None
        dino_global = dino[-1]
        ibot = prototypes = None
        if patches is not None:
            ibot_head = self.dino_head if self.ibot_head is None else self.ibot_head
            ibot = features[-1] if shared_patches else ibot_head.bottleneck(patches)
            if ibot_features:
                prototypes = ibot_head.last_layer.normalized_weight()
            else:
                ibot = ibot_head.last_layer(ibot)
        return NetworkOutput(glob.cls_token, glob.patch_tokens, dino_global, dino_local, ibot, prototypes)


@dataclass
class SSLOutput:
    loss: torch.Tensor  # scalar, weighted total
    metrics: dict[str, torch.Tensor]  # detached scalars


class SSLModel(nn.Module):
    """DINOv2 self-distillation around a `DinoEncoder` (random-init or a released checkpoint).

    student = `encoder` (uniform drop-path), teacher = deep copy of student backbone + heads
    (eval mode, no gradients, EMA-updated), optional frozen Gram reference = another copy.
    Heads are always fresh, so continued pretraining from a checkpoint starts with
    student = teacher = checkpoint.
    """

    def __init__(self, config: SSLConfig, encoder: DinoEncoder, total_steps: int) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.total_steps = total_steps
        heads = config.heads
        dim = encoder.hidden_size
        dino_head = DinoHead(dim, heads.num_prototypes, heads.hidden_dim, heads.bottleneck_dim, heads.num_layers)
        ibot_head = None
        if not heads.shared_ibot:
            ibot_k = heads.ibot_num_prototypes or heads.num_prototypes
            ibot_head = DinoHead(dim, ibot_k, heads.hidden_dim, heads.bottleneck_dim, heads.num_layers)
        self.student = SSLNetwork(encoder, dino_head, ibot_head, config.optim.pack_crops)
        self.teacher = copy.deepcopy(self.student).requires_grad_(False).eval()
        self.gram_reference: DinoEncoder | None = None
        if config.loss.gram_weight > 0:
            self.gram_reference = copy.deepcopy(encoder).requires_grad_(False).eval()
        if config.optim.drop_path > 0:
            for block in encoder.blocks:
                block.drop_path = Dinov2DropPath(config.optim.drop_path)
        loss = config.loss
        ibot_k = dino_head.num_prototypes if ibot_head is None else ibot_head.num_prototypes
        self.dino_targets = TeacherTargets(dino_head.num_prototypes, loss.centering, loss.center_momentum, loss.sinkhorn_iterations)
        self.ibot_targets = TeacherTargets(ibot_k, loss.centering, loss.center_momentum, loss.sinkhorn_iterations)
        self._seen_global_batch: int | None = None
        self._schedules = None if config.optim.batch_size is None else self._make_schedules(config.optim.batch_size)

    # ------------------------------------------------------------------ access
    @property
    def student_backbone(self) -> DinoEncoder:
        return self.student.backbone

    @property
    def teacher_backbone(self) -> DinoEncoder:
        return self.teacher.backbone

    @property
    def schedules(self) -> SSLSchedules:
        if self._schedules is None:
            if self._seen_global_batch is None:
                raise ValueError(
                    "global batch size unknown for the lr scaling: set optim.batch_size "
                    "(images per step over all processes) or call forward() before apply_schedules()"
                )
            self._schedules = self._make_schedules(self._seen_global_batch)
        return self._schedules

    def _make_schedules(self, global_batch: int) -> SSLSchedules:
        optim = self.config.optim
        return SSLSchedules(self.total_steps, scaled_lr(optim.base_lr, optim.lr_scaling, global_batch), self.config)

    def train(self, mode: bool = True) -> "SSLModel":
        super().train(mode)
        self.teacher.eval()  # teacher and reference never use drop-path / dropout
        if self.gram_reference is not None:
            self.gram_reference.eval()
        return self

    # ------------------------------------------------------------------ forward
    def forward(self, batch: MultiCropBatch, step: int) -> SSLOutput:
        cfg = self.config.loss
        crops, masks = batch.global_crops, batch.masks
        batch_size = batch.batch_size
        if self._seen_global_batch is None:
            self._seen_global_batch = batch_size * world_size()
        if masks.shape[0] != crops.shape[0]:
            raise ValueError(f"masks for {masks.shape[0]} crops, global crops {crops.shape[0]}")
        use_ibot = cfg.ibot_weight > 0
        mask_index = batch.mask_index if use_ibot else None
        temperature = self.schedules.teacher_temp(step)

        with torch.no_grad():
            dino_targets, ibot_targets = self._teacher_targets(crops, mask_index, temperature)
            reference = self.gram_reference(crops).patch_tokens if self.gram_reference is not None else None

        local_crops = batch.local_crops if batch.num_local else None
        student = self.student(crops, local_crops, masks, mask_index, ibot_features=True)
        dino_local, dino_global = dino_loss(student.dino_global, student.dino_local, dino_targets, cfg.student_temp)
        total = cfg.dino_weight * (dino_local + dino_global)
        metrics = {"dino_local": dino_local, "dino_global": dino_global}
        if use_ibot:
            metrics["ibot"] = ibot_loss(student.ibot, student.ibot_prototypes, ibot_targets, masks, cfg.student_temp, mask_index)
            total = total + cfg.ibot_weight * metrics["ibot"]
        if cfg.koleo_weight > 0:
            # Sum over the two global crops: no KoLeo between two crops of one image.
            metrics["koleo"] = sum(koleo_loss(cls) for cls in student.global_cls.chunk(2))
            total = total + cfg.koleo_weight * metrics["koleo"]
        if reference is not None:
            metrics["gram"] = gram_loss(student.global_patches, reference, cfg.gram_remove_negative)
            total = total + cfg.gram_weight * metrics["gram"]

        with torch.no_grad():
            entropy = -(dino_targets * torch.log(dino_targets.clamp(min=1e-12))).sum(dim=-1).mean()
            normed = nn.functional.normalize(student.global_cls.detach().float(), dim=-1)
            metrics["teacher_entropy"] = entropy
            # KL(teacher ‖ student) of the global crops: their mean CE (global part × terms / 2) minus the
            # targets' entropy; ≈ 0 with near-uniform targets means the backbone gets almost no signal
            terms = 2 * batch.num_local + 2
            metrics["dino_kl"] = dino_global.detach() * terms / 2 - entropy
            # entropy of the batch-mean target: high with a sharp teacher that uses many prototypes,
            # low when one prototype wins everywhere
            mean_target = dino_targets.float().mean(dim=0)
            metrics["teacher_batch_entropy"] = -(mean_target * torch.log(mean_target.clamp(min=1e-12))).sum()
            metrics["center_norm"] = self.dino_targets.center_norm().to(entropy.device)
            metrics["feature_std"] = normed.std(dim=0).mean()
            metrics["teacher_temp"] = entropy.new_full((), temperature)
        return SSLOutput(total, {k: v.detach() for k, v in metrics.items()})

    # ------------------------------------------------------------------ teacher
    @torch.no_grad()
    def _teacher_targets(
        self, crops: torch.Tensor, mask_index: torch.Tensor | None, temperature: float
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """DINO's and (with `mask_index`) iBOT's targets; the teacher's logits are freed on return, before the
        student's forward."""
        teacher = self.teacher(crops, mask_index=mask_index)
        if mask_index is None:
            return self.dino_targets(teacher.dino_global, temperature), None
        # both heads' cross-rank sums share their all-reduces
        dino, ibot = joint_targets([self.dino_targets, self.ibot_targets], [teacher.dino_global, teacher.ibot], temperature)
        return dino, ibot

    @torch.no_grad()
    def update_teacher(self, step: int, skip: torch.Tensor | None = None) -> None:
        """teacher ← m·teacher + (1 − m)·student over backbone and heads, m = momentum(step);
        with `loss.gram_refresh_steps` = N > 0 the Gram reference becomes the teacher backbone
        every N steps. `skip`: a bool device tensor; when True the weight is 0 and the teacher stays
        exactly as it is, softmax centres included (decided on the device, no host read)."""
        momentum = self.schedules.momentum(step)
        teacher = list(self.teacher.parameters())
        student = [p.detach() for p in self.student.parameters()]
        weight = 1.0 - momentum
        if skip is None:
            torch._foreach_lerp_(teacher, student, weight)
        else:  # a tensor weight per parameter: a single tensor would bind to the Scalar overload, read on the host
            weight = (~skip).to(teacher[0].dtype) * weight
            torch._foreach_lerp_(teacher, student, [weight] * len(teacher))
            self.dino_targets.revert_if(skip)  # the forward's centre update belongs to the skipped step
            self.ibot_targets.revert_if(skip)
        refresh = self.config.loss.gram_refresh_steps
        if self.gram_reference is not None and refresh > 0 and step > 0 and step % refresh == 0:
            self.gram_reference.load_state_dict(self.teacher.backbone.state_dict())

    # ------------------------------------------------------------------ optimisation
    def param_groups(self) -> list[dict]:
        optim = self.config.optim
        return param_groups(self.student, self.student_backbone.num_layers, optim.layer_decay, optim.patch_embed_lr_mult)

    def apply_schedules(self, optimizer: torch.optim.Optimizer, step: int) -> dict[str, float]:
        """Set each group's lr / weight_decay for `step`; returns the scalar schedule values."""
        s = self.schedules
        lr, last_lr, wd = s.lr(step), s.last_layer_lr(step), s.weight_decay(step)
        frozen_backbone = s.backbone_frozen(step)
        for group in optimizer.param_groups:
            if "lr_mult" not in group:
                raise ValueError(f"optimizer group {group.get('name', '?')!r} has no lr_mult; build it from SSLModel.param_groups()")
            base = last_lr if group["is_last_layer"] else lr
            group["lr"] = 0.0 if frozen_backbone and group["is_backbone"] else base * group["lr_mult"]
            group["weight_decay"] = wd * group["wd_mult"]
        return {
            "lr": lr,
            "last_layer_lr": last_lr,
            "weight_decay": wd,
            "momentum": s.momentum(step),
            "teacher_temp": s.teacher_temp(step),
        }

    def clip_gradients(self) -> torch.Tensor:
        """Clip gradient norms to optim.clip_grad (per module — backbone, each head — as
        upstream, or over everything); returns the total norm before clipping (a device scalar)."""
        optim = self.config.optim
        max_norm = optim.clip_grad if optim.clip_grad > 0 else math.inf
        modules = [m for m in (self.student.backbone, self.student.dino_head, self.student.ibot_head) if m is not None]
        parts = modules if optim.clip_per_module else [self.student]
        norms = []
        for module in parts:
            params = [p for p in module.parameters() if p.grad is not None]
            if params:
                norms.append(torch.nn.utils.clip_grad_norm_(params, max_norm).float())
        return torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())
