"""The SSL recipe as nested dataclasses; defaults = DINOv2's `dinov2/configs/ssl_default_config.yaml`
(facebookresearch/dinov2), written out in `configs/ssl/dinov2_default.yaml`, the file the pretraining
presets inherit. Read a recipe file with the package's one loader:
`vla_dino.configs.loader.load(SSLConfig, vla_dino.configs.ssl_recipe_path("dinov2_continued"))`."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class CropConfig:
    global_size: int = 224  # must be a multiple of the patch size
    local_size: int = 98  # 96 in the paper; 98 = 7 × 14 for /14 models
    num_local: int = 8
    global_scale: tuple[float, float] = (0.32, 1.0)  # fraction of the frame's area
    local_scale: tuple[float, float] = (0.05, 0.32)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # crop aspect ratio range (log-uniform)
    hflip: bool = True  # flip with p=0.5; turn off when left/right matters (robot arms)
    jitter_strength: float = 1.0  # scales ColorJitter(0.4, 0.4, 0.2, 0.1); 0 disables it
    jitter_prob: float = 0.8
    grayscale_prob: float = 0.2
    # Effective blur probabilities of the released models (upstream passes 1 − p).
    blur_prob_global1: float = 0.0
    blur_prob_global2: float = 0.9
    blur_prob_local: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel: int = 9
    solarize_prob_global2: float = 0.2
    # With temporal neighbours: share of local crops taken from the neighbour frame.
    temporal_local_fraction: float = 0.5


@dataclass
class MaskConfig:
    mask_probability: float = 0.5  # share of global crops (student side) that get a mask
    ratio_min_max: tuple[float, float] = (0.1, 0.5)  # masked fraction, spread over the batch
    min_patches: int = 4  # smallest block
    aspect: tuple[float, float] = (0.3, 1 / 0.3)  # block aspect ratio range (log-uniform)
    max_block_fraction: float = 0.5  # largest single block, as a fraction of the grid


@dataclass
class HeadConfig:
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    num_prototypes: int = 65536
    num_layers: int = 3
    shared_ibot: bool = True  # iBOT uses the DINO head (False: a separate head)
    ibot_num_prototypes: int | None = None  # separate head only; None = num_prototypes


@dataclass
class LossConfig:
    dino_weight: float = 1.0
    ibot_weight: float = 1.0
    koleo_weight: float = 0.1
    gram_weight: float = 0.0  # > 0 enables Gram anchoring (DINOv3)
    centering: str = "sinkhorn"  # "sinkhorn" (Sinkhorn-Knopp) | "softmax" (EMA centre)
    sinkhorn_iterations: int = 3
    student_temp: float = 0.1
    center_momentum: float = 0.9  # softmax centering only
    gram_remove_negative: bool = False  # clamp negative similarities to 0 in both Gram matrices
    # Gram reference refresh from the EMA teacher every N steps (DINOv3); 0 with gram_anchor.
    gram_refresh_steps: int = 0


@dataclass
class OptimConfig:
    base_lr: float = 0.004
    lr_scaling: str = "sqrt_wrt_1024"  # lr = base_lr · sqrt(global_batch / 1024) | "none"
    batch_size: int | None = None  # global images per step; None = seen by forward() × world size
    min_lr: float = 1e-6
    warmup_fraction: float = 0.1
    weight_decay: tuple[float, float] = (0.04, 0.4)  # cosine from → to
    layer_decay: float = 0.9
    patch_embed_lr_mult: float = 0.2
    clip_grad: float = 3.0  # ≤ 0: no clipping (the norm is still returned)
    clip_per_module: bool = True  # upstream clips backbone and each head separately
    betas: tuple[float, float] = (0.9, 0.999)
    freeze_last_layer_steps: int | None = None  # None = 1% of the steps (upstream: 1 of 100 epochs)
    drop_path: float = 0.3  # student only (uniform over blocks); ViT-S/B usually 0.1
    # Student global + local crops through the backbone in one packed pass (DinoEncoder.forward_packed,
    # equal to two calls within float rounding); not under FSDP2, which hooks each block's own call.
    pack_crops: bool = False


@dataclass
class ScheduleConfig:
    teacher_temp: tuple[float, float] = (0.04, 0.07)  # linear warm-up from → to, then constant
    teacher_temp_warmup_fraction: float = 0.3
    momentum: tuple[float, float] = (0.992, 1.0)  # cosine from → to


@dataclass
class ContinuedConfig:
    head_warmup_steps: int = 0  # backbone lr 0 for this many steps (fresh heads catch up)
    gram_anchor: bool = False  # Gram loss against the frozen initial model (needs loss.gram_weight > 0)


@dataclass
class SSLConfig:
    crops: CropConfig = field(default_factory=CropConfig)
    masking: MaskConfig = field(default_factory=MaskConfig)
    heads: HeadConfig = field(default_factory=HeadConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedules: ScheduleConfig = field(default_factory=ScheduleConfig)
    continued: ContinuedConfig = field(default_factory=ContinuedConfig)

    def validate(self) -> "SSLConfig":
        """Raise ValueError naming the first inconsistent field."""
        c, m, lo, o = self.crops, self.masking, self.loss, self.optim
        checks = [
            (c.global_size > 0 and c.local_size > 0, "crops.global_size and crops.local_size must be > 0"),
            (c.num_local >= 0, "crops.num_local must be >= 0"),
            (0 < c.global_scale[0] <= c.global_scale[1] <= 1, "crops.global_scale must satisfy 0 < lo <= hi <= 1"),
            (0 < c.local_scale[0] <= c.local_scale[1] <= 1, "crops.local_scale must satisfy 0 < lo <= hi <= 1"),
            (0 < c.ratio[0] <= c.ratio[1], "crops.ratio must satisfy 0 < lo <= hi"),
            (c.blur_kernel % 2 == 1, "crops.blur_kernel must be odd"),
            (0 <= c.temporal_local_fraction <= 1, "crops.temporal_local_fraction must be in [0, 1]"),
            (0 <= m.mask_probability <= 1, "masking.mask_probability must be in [0, 1]"),
            (0 <= m.ratio_min_max[0] <= m.ratio_min_max[1] <= 1, "masking.ratio_min_max must satisfy 0 <= lo <= hi <= 1"),
            (lo.centering in ("sinkhorn", "softmax"), f"loss.centering {lo.centering!r}; expected 'sinkhorn' or 'softmax'"),
            (lo.student_temp > 0, "loss.student_temp must be > 0"),
            (lo.gram_weight >= 0, "loss.gram_weight must be >= 0"),
            (o.lr_scaling in ("sqrt_wrt_1024", "none"), f"optim.lr_scaling {o.lr_scaling!r}; expected 'sqrt_wrt_1024' or 'none'"),
            (o.batch_size is None or o.batch_size > 0, "optim.batch_size must be > 0 (or null)"),
            (0 <= o.warmup_fraction <= 1, "optim.warmup_fraction must be in [0, 1]"),
            (0 <= o.drop_path < 1, "optim.drop_path must be in [0, 1)"),
            (0 <= self.schedules.teacher_temp_warmup_fraction <= 1, "schedules.teacher_temp_warmup_fraction must be in [0, 1]"),
            (self.continued.head_warmup_steps >= 0, "continued.head_warmup_steps must be >= 0"),
            (
                not self.continued.gram_anchor or lo.gram_weight > 0,
                "continued.gram_anchor=true needs loss.gram_weight > 0",
            ),
            (
                not self.continued.gram_anchor or lo.gram_refresh_steps == 0,
                "continued.gram_anchor=true keeps the initial model as reference; set loss.gram_refresh_steps=0",
            ),
            (
                lo.gram_weight == 0 or self.continued.gram_anchor or lo.gram_refresh_steps > 0,
                "loss.gram_weight > 0 needs a reference: continued.gram_anchor=true (initial model) "
                "or loss.gram_refresh_steps > 0 (EMA teacher snapshots)",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"invalid SSL config: {message}")
        return self

