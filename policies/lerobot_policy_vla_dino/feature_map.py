"""Our towers as a drop-in for the ResNet feature map inside LeRobot's ACT and Diffusion policies.

`TowerFeatureMap` turns camera images in [0, 1] into a patch-feature map (B, C, h, w): DINOv2
(optionally fused with SigLIP on the channel axis) through `vla_dino.adapter`'s `FusedBackbone`,
which resizes and normalises per tower itself. LeRobot's processors must therefore leave VISUAL
features un-normalised (IDENTITY); the swapped configs default to that.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from vla_dino.adapter.backbone import FusedBackbone
from vla_dino.adapter.config import validate_tower_fields


@dataclass
class TowerBackboneConfig:
    """Which towers replace the ResNet, and how they train.

    `dino` / `siglip`: sources as in `VisionTokenizerConfig` (size name = random init, hub id, local
    folder incl. our pretrain export, official `.pth`). `layer` picks the block (-1 last, -2
    OpenVLA's); `final_norm` applies the tower's final LayerNorm (the released features with -1).
    `train_mode`: "full" mirrors LeRobot's ACT/Diffusion, which train their ResNet (at
    `optimizer_lr_backbone`); "frozen" or "last_n" (`trainable_blocks`).
    """

    dino: str = "facebook/dinov2-with-registers-small"
    siglip: str | None = None
    image_size: int = 224
    resize_mode: str = "resize"
    layer: int = -1
    final_norm: bool = True
    train_mode: str = "full"
    trainable_blocks: int = 0
    dtype: str = "float32"

    def __post_init__(self) -> None:
        validate_tower_fields(self, "policy.backbone")


class TowerFeatureMap(nn.Module):
    """Images (B, 3, H, W) in [0, 1] → patch-feature map (B, C, h, w) with C = the towers' widths."""

    def __init__(self, config: TowerBackboneConfig) -> None:
        super().__init__()
        self.towers = FusedBackbone.from_config(config)

    @property
    def out_channels(self) -> int:
        return self.towers.hidden_size

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.towers.grid_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.towers(images)  # (B, h·w, C), raster order
        height, width = self.grid_size
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, height, width)


class LayerDict(nn.Module):
    """Wraps a module so that it returns `{"feature_map": out}` like torchvision's IntermediateLayerGetter."""

    def __init__(self, module: TowerFeatureMap) -> None:
        super().__init__()
        self.module = module

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"feature_map": self.module(images)}


def split_backbone_params(policy: nn.Module, is_backbone: Callable[[str], bool], backbone_lr: float) -> list[dict]:
    """Optimizer groups: trainable backbone parameters at `backbone_lr`, the rest at the optimizer's lr."""
    named = [(name, p) for name, p in policy.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for name, p in named if not is_backbone(name)]},
        {"params": [p for name, p in named if is_backbone(name)], "lr": backbone_lr},
    ]
    return [group for group in groups if group["params"]]
