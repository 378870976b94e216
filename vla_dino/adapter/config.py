"""`TowerConfig` (which towers `FusedBackbone` builds) and `VisionTokenizerConfig` (towers + token
head): plain fields only, so draccus can parse them from the command line."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal, get_args

# Literal types give the command line (draccus) its choices; the tuples are for checks and errors.
ResizeMode = Literal["resize", "letterbox"]
Projector = Literal["fused-gelu-mlp", "mlp", "linear", "none"]
TrainMode = Literal["frozen", "full", "last_n"]
TokenReduction = Literal["none", "pool2x2", "attention_pool"]
Dtype = Literal["float32", "bfloat16"]
RESIZE_MODES: tuple[str, ...] = get_args(ResizeMode)
PROJECTORS: tuple[str, ...] = get_args(Projector)
TRAIN_MODES: tuple[str, ...] = get_args(TrainMode)
TOKEN_REDUCTIONS: tuple[str, ...] = get_args(TokenReduction)
DTYPES: tuple[str, ...] = get_args(Dtype)


@dataclass
class TowerConfig:
    """The towers of a `FusedBackbone` and how they run and train (`FusedBackbone.from_config`).

    Towers (`dino`, `siglip`; sources in the field comments): DINOv2 or DINOv3 ViT, optionally
    fused with SigLIP or SigLIP 2; the tower class follows each checkpoint's model_type.

    Features: `layer` picks the block whose *raw* output is used (0-based; negative counts from the
    end; -2 = second-to-last = OpenVLA). `final_norm=True` applies each tower's final LayerNorm on
    top (with `layer=-1` that gives the towers' released last-layer features). Prefix tokens (CLS,
    registers) are dropped; SigLIP / SigLIP 2 have none and their pooling heads never run.

    `train_mode`: "frozen" (towers under no_grad, eval mode), "full" (every block the features
    depend on), "last_n" (only the last `trainable_blocks` blocks up to `layer` in each tower, plus
    the final norm when `final_norm`). Blocks after `layer` never run and never train.

    `dtype="bfloat16"` runs the towers under bf16 autocast where the device supports it (weights
    stay float32).
    """

    # Prefix of this config's fields in error messages (a command-line surface sets its own).
    where: ClassVar[str] = "TowerConfig"

    # First tower: a DINOv2 size name (random init: vits14 … vitg14, *_reg, tiny), a hub id
    # (facebook/dinov2-with-registers-large; downloaded on first use), a local transformers folder
    # (DINOv2, or DINOv3 ViT by its model_type), a vla_dino pretrain export folder, or an official
    # DINOv2 .pth/.safetensors file (hub or training-code layout).
    dino: str = "vitl14_reg"
    # Second tower, fused on the channel axis: None = DINO only; "so400m" / "tiny" / "small-test"
    # (random init), a hub id (google/siglip-so400m-patch14-224) or a local folder of SigLIP or
    # SigLIP 2 (picked by model_type). Both towers must give the same patch grid at image_size.
    siglip: str | None = None
    # Side in pixels each camera image is resized to for the towers (a multiple of the patch sizes).
    image_size: int = 224
    # resize: stretch to image_size² (OpenVLA's resize-naive); letterbox: keep the aspect ratio, pad.
    resize_mode: ResizeMode = "resize"
    # Block whose raw output is used: 0-based, negative from the end; -2 = second-to-last (OpenVLA).
    layer: int = -2
    # Apply each tower's final LayerNorm on top (with layer=-1: the released last-layer features).
    final_norm: bool = False
    # frozen: towers under no_grad in eval mode; full: every block up to `layer`; last_n: the last
    # `trainable_blocks` blocks up to `layer` in each tower.
    train_mode: TrainMode = "frozen"
    # Blocks trained per tower with train_mode=last_n (0 otherwise).
    trainable_blocks: int = 0
    # Tower compute: float32, or bfloat16 autocast where the device supports it (weights stay fp32).
    dtype: Dtype = "float32"

    def __post_init__(self) -> None:
        where = self.where
        _choice(where, "resize_mode", self.resize_mode, RESIZE_MODES)
        _choice(where, "train_mode", self.train_mode, TRAIN_MODES)
        _choice(where, "dtype", self.dtype, DTYPES)
        if not self.dino:
            raise ValueError(f"{where}.dino is empty; expected a size name, hub id, folder or file")
        if self.siglip == "":
            raise ValueError(f"{where}.siglip is empty; use None for the DINO-only path")
        if self.image_size <= 0:
            raise ValueError(f"{where}.image_size={self.image_size}; expected a positive pixel size")
        if self.train_mode == "last_n" and self.trainable_blocks <= 0:
            raise ValueError(f"{where}.train_mode='last_n' needs trainable_blocks >= 1")
        if self.train_mode != "last_n" and self.trainable_blocks:
            raise ValueError(
                f"{where}.trainable_blocks={self.trainable_blocks} is only used with train_mode='last_n' "
                f"(got train_mode={self.train_mode!r})"
            )


@dataclass
class VisionTokenizerConfig(TowerConfig):
    """Camera images (+ proprio) → tokens for a policy head: the towers of `TowerConfig`, then a
    projector, an optional token reduction and camera / proprio tokens.

    `out_dim` is the token width after the projector; with `projector="none"` the tokens keep
    the fused channel width (C_dino + C_siglip) and `out_dim` is ignored. Projector and token
    heads run in float32 whatever the towers' `dtype`.
    """

    where: ClassVar[str] = "VisionTokenizerConfig"

    # Token projector: fused-gelu-mlp (OpenVLA's 3-layer), mlp, linear, or none (keep fused width).
    projector: Projector = "fused-gelu-mlp"
    # Token width after the projector (ignored with projector=none).
    out_dim: int = 512
    # Camera names, in token order (the policies set these from the dataset's image features).
    camera_names: list[str] = field(default_factory=lambda: ["image"])
    # Width of the proprio vector turned into one extra token; 0 = none (policies set it).
    proprio_dim: int = 0
    # Per-camera token reduction after the projector: none, pool2x2 (average 2×2 patches) or
    # attention_pool (num_pooled_tokens learned queries).
    token_reduction: TokenReduction = "none"
    # Tokens per camera with token_reduction=attention_pool.
    num_pooled_tokens: int = 8
    # Attention heads of the attention pool.
    attention_pool_heads: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        self.camera_names = list(self.camera_names)
        _choice("VisionTokenizerConfig", "projector", self.projector, PROJECTORS)
        _choice("VisionTokenizerConfig", "token_reduction", self.token_reduction, TOKEN_REDUCTIONS)
        if self.projector != "none" and self.out_dim <= 0:
            raise ValueError(f"VisionTokenizerConfig.out_dim={self.out_dim}; expected a positive width")
        if not self.camera_names:
            raise ValueError("VisionTokenizerConfig.camera_names is empty; expected at least one camera")
        if len(set(self.camera_names)) != len(self.camera_names):
            raise ValueError(f"VisionTokenizerConfig.camera_names has duplicates: {self.camera_names}")
        if self.proprio_dim < 0:
            raise ValueError(f"VisionTokenizerConfig.proprio_dim={self.proprio_dim}; expected 0 (none) or more")
        if self.token_reduction == "attention_pool" and self.num_pooled_tokens <= 0:
            raise ValueError("VisionTokenizerConfig.num_pooled_tokens must be >= 1 with token_reduction='attention_pool'")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "VisionTokenizerConfig":
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown VisionTokenizerConfig keys {unknown}; expected {sorted(cls.__dataclass_fields__)}")
        return cls(**values)


def _choice(where: str, name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{where}.{name}={value!r}; expected one of {list(allowed)}")
