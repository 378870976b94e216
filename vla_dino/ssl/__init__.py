"""The full DINOv2 objective: multi-crop, block masks, DINO + iBOT + KoLeo (+ Gram), teacher
centering (Sinkhorn-Knopp or softmax), EMA teacher, parameter groups and schedules.

Public API::

    config = load(SSLConfig, "configs/ssl/dinov2_default.yaml", {"loss.koleo_weight": 0.0})  # vla_dino.configs.loader
    # SSLConfig(crops, masking, heads, loss, optim, schedules, continued); defaults = DINOv2 recipe

    augment = MultiCropAugmentation(config.crops, patch_size=14, masking=config.masking)
    batch = augment(frames_uint8_bchw, neighbors=None)   # MultiCropBatch, same device as frames
    #  .global_crops (2B,3,G,G) crop-major, .local_crops (L·B,3,l,l), .masks (2B,(G/p)²) bool, .to(device)

    model = SSLModel(config, DinoEncoder.from_size("vits14") or DinoEncoder.from_pretrained(...), total_steps)
    trainer = SSLTrainer(model, precision="fp32")         # owns AdamW over model.param_groups() and the grad scaler
    for step in range(total_steps):
        result = trainer.step(batch, step)   # schedules → forward → backward → clip → non-finite guard → fused AdamW → EMA
        # StepResult(loss, metrics, grad_norm, finite, schedule={"lr","last_layer_lr","weight_decay","momentum","teacher_temp"})

Metrics: dino_local, dino_global, ibot, koleo (sum over the 2 global crops, as it enters the
loss), gram (when used), teacher_entropy (mean entropy of the teacher's CLS targets; log K
means uniform, 0 means one-hot), center_norm (softmax centering; 0 for Sinkhorn),
feature_std (std over the batch of L2-normalised student CLS, mean over dims; ≈ 1/√D when
spread, → 0 at collapse), teacher_temp.

Param groups carry `lr_mult`, `wd_mult`, `is_last_layer`, `is_backbone`, `name`.
`apply_schedules` sets lr = schedule · lr_mult (last layer 0 while frozen; backbone 0 during
`continued.head_warmup_steps`) and weight_decay = schedule · wd_mult. The lr is scaled by
sqrt(global_batch / 1024): set `optim.batch_size` to the global batch, or it is taken from
the first `forward` (per-process batch × world size).

Distributed: wrap the whole SSLModel in DDP (the teacher and Gram reference have
requires_grad=False, so DDP neither syncs nor waits for them; the student runs in a single
forward call). Centering statistics are all-reduced when torch.distributed is initialised;
losses are per-rank means, so DDP's gradient average equals the single-process gradient.
Autocast (`SSLTrainer(precision=...)`) wraps the forward only; losses and teacher targets compute in fp32.

Continued pretraining: pass a released checkpoint as the encoder; heads are fresh, student =
teacher = checkpoint; `continued.head_warmup_steps` keeps the backbone's lr at 0 while the
heads warm up; `continued.gram_anchor` + `loss.gram_weight` add Gram anchoring to the
frozen initial model (see configs/ssl/dinov2_continued.yaml).
"""

from vla_dino.ssl.augment import MultiCropAugmentation, MultiCropBatch
from vla_dino.ssl.centering import SoftmaxCenter, TeacherTargets, joint_targets, sinkhorn_knopp, sinkhorn_knopp_joint
from vla_dino.ssl.config import (
    ContinuedConfig,
    CropConfig,
    HeadConfig,
    LossConfig,
    MaskConfig,
    OptimConfig,
    ScheduleConfig,
    SSLConfig,
)
from vla_dino.ssl.heads import DinoHead
from vla_dino.ssl.masking import BlockMaskGenerator, sample_masks
from vla_dino.ssl.model import SSLModel, SSLNetwork, SSLOutput
from vla_dino.ssl.schedules import SSLSchedules
from vla_dino.ssl.trainer import SSLTrainer, StepResult

__all__ = [
    "BlockMaskGenerator",
    "ContinuedConfig",
    "CropConfig",
    "DinoHead",
    "HeadConfig",
    "LossConfig",
    "MaskConfig",
    "MultiCropAugmentation",
    "MultiCropBatch",
    "OptimConfig",
    "SSLConfig",
    "SSLModel",
    "SSLNetwork",
    "SSLOutput",
    "SSLSchedules",
    "SSLTrainer",
    "ScheduleConfig",
    "SoftmaxCenter",
    "StepResult",
    "TeacherTargets",
    "joint_targets",
    "sample_masks",
    "sinkhorn_knopp",
    "sinkhorn_knopp_joint",
]
