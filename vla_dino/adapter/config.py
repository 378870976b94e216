"""`VisionTokenizerConfig`: plain fields only, so draccus can parse it from the command line."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

RESIZE_MODES = ("resize", "letterbox")
PROJECTORS = ("fused-gelu-mlp", "mlp", "linear", "none")
TRAIN_MODES = ("frozen", "full", "last_n")
TOKEN_REDUCTIONS = ("none", "pool2x2", "attention_pool")
DTYPES = ("float32", "bfloat16")


@dataclass
class VisionTokenizerConfig:
    """Camera images (+ proprio) → tokens for a policy head.

    Towers:
    - `dino`: a DinoEncoder size name (random init, e.g. "vitl14_reg", "tiny_reg"), a hub id
      (facebook/dinov2-with-registers-large), a local transformers folder (our pretrain export
      included) or an official `.pth`/`.safetensors` file.
    - `siglip`: None for the DINO-only path; else a hub id (google/siglip-so400m-patch14-224), a
      local folder (SiglipVisionModel or full SiglipModel), or "so400m" / "tiny" / "small-test" (random init).

    Features: `layer` picks the block whose *raw* output is used (0-based; negative counts from the
    end; -2 = second-to-last = OpenVLA). `final_norm=True` applies each tower's final LayerNorm on
    top (with `layer=-1` that gives the towers' released last-layer features). Prefix tokens (CLS,
    registers) are dropped; SigLIP has none and its pooling head is never run.

    `out_dim` is the token width after the projector; with `projector="none"` the tokens keep
    the fused channel width (C_dino + C_siglip) and `out_dim` is ignored.

    `train_mode`: "frozen" (towers under no_grad, eval mode), "full" (every block the features
    depend on), "last_n" (only the last `trainable_blocks` blocks up to `layer` in each tower, plus
    the final norm when `final_norm`). Blocks after `layer` never run and never train.

    `dtype="bfloat16"` runs the towers under bf16 autocast where the device supports it (weights
    stay float32); projector and token heads run in float32.
    """

    dino: str = "vitl14_reg"
    siglip: str | None = None
    image_size: int = 224
    resize_mode: str = "resize"
    layer: int = -2
    final_norm: bool = False
    projector: str = "fused-gelu-mlp"
    out_dim: int = 512
    train_mode: str = "frozen"
    trainable_blocks: int = 0
    camera_names: list[str] = field(default_factory=lambda: ["image"])
    proprio_dim: int = 0
    token_reduction: str = "none"
    num_pooled_tokens: int = 8
    attention_pool_heads: int = 8
    dtype: str = "float32"

    def __post_init__(self) -> None:
        self.camera_names = list(self.camera_names)
        validate_tower_fields(self, "VisionTokenizerConfig")
        _choice("VisionTokenizerConfig", "projector", self.projector, PROJECTORS)
        _choice("VisionTokenizerConfig", "token_reduction", self.token_reduction, TOKEN_REDUCTIONS)
        if not self.dino:
            raise ValueError("VisionTokenizerConfig.dino is empty; expected a size name, hub id, folder or file")
        if self.siglip == "":
            raise ValueError("VisionTokenizerConfig.siglip is empty; use None for the DINO-only path")
        if self.image_size <= 0:
            raise ValueError(f"VisionTokenizerConfig.image_size={self.image_size}; expected a positive pixel size")
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


def validate_tower_fields(config: Any, where: str) -> None:
    """Checks the tower fields shared by every config that builds a `FusedBackbone`
    (`VisionTokenizerConfig`, the policies' `TowerBackboneConfig`); `where` prefixes the errors."""
    _choice(where, "resize_mode", config.resize_mode, RESIZE_MODES)
    _choice(where, "train_mode", config.train_mode, TRAIN_MODES)
    _choice(where, "dtype", config.dtype, DTYPES)
    if config.train_mode == "last_n" and config.trainable_blocks <= 0:
        raise ValueError(f"{where}.train_mode='last_n' needs trainable_blocks >= 1")
    if config.train_mode != "last_n" and config.trainable_blocks:
        raise ValueError(
            f"{where}.trainable_blocks={config.trainable_blocks} is only used with train_mode='last_n' "
            f"(got train_mode={config.train_mode!r})"
        )
