"""Our towers as a drop-in for the ResNet feature map inside LeRobot's ACT and Diffusion policies.

`TowerFeatureMap` turns camera images in [0, 1] into a patch-feature map (B, C, h, w): DINOv2
(optionally fused with SigLIP on the channel axis) through `vla_dino.adapter`'s `FusedBackbone`,
which resizes and normalises per tower itself. LeRobot's processors must therefore leave VISUAL
features un-normalised (IDENTITY); the swapped configs default to that.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from vla_dino.adapter.backbone import FusedBackbone
from vla_dino.adapter.config import TowerConfig, TrainMode


@dataclass
class TowerBackboneConfig(TowerConfig):
    """Which towers replace the ResNet, and how they train (the feature map is (B, C, h, w) with
    C = the towers' widths and h×w their shared patch grid).

    The defaults differ from the adapter's (`TowerConfig`: OpenVLA's frozen second-to-last block)
    because the towers stand in for ACT's / Diffusion's ResNet, which gives its last stage and
    trains end to end: last block with its final norm, trained in full."""

    where: ClassVar[str] = "policy.backbone"

    # First tower. The default, facebook/dinov2-with-registers-small (ViT-S/14 + 4 registers), is
    # downloaded from the Hugging Face hub on first use. Also: a size name (random init: vits14 …,
    # *_reg, tiny), another hub id, a local transformers folder (DINOv2, or DINOv3 ViT by its
    # model_type), a vla_dino pretrain export folder, or an official DINOv2 .pth/.safetensors file.
    dino: str = "facebook/dinov2-with-registers-small"
    # Block whose output is the feature map: -1 last, -2 second-to-last (OpenVLA), 0-based otherwise.
    layer: int = -1
    # Apply each tower's final LayerNorm (with layer=-1: the released last-layer features).
    final_norm: bool = True
    # full: train every block up to `layer` at optimizer_lr_backbone, as ACT/Diffusion train their
    # ResNet; frozen; or last_n (the last `trainable_blocks` blocks of each tower).
    train_mode: TrainMode = "full"


class TowerFeatureMap(nn.Module):
    """Images (B, 3, H, W) in [0, 1] → patch-feature map (B, C, h, w) with C = the towers' widths."""

    def __init__(self, config: TowerBackboneConfig, architecture: Path | None = None) -> None:
        """`architecture`: build the towers from saved architectures (see `FusedBackbone.from_config`)."""
        super().__init__()
        self.towers = FusedBackbone.from_config(config, architecture)

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


def check_unused_resnet_fields(config: Any, expected: dict[str, Any], policy_type: str) -> None:
    """ACT's and Diffusion's ResNet fields are inherited but have no effect once the towers replace the ResNet: any
    value but the one they are built with (never downloaded weights) is an error, so recipes that set them fail loudly."""
    for name, value in expected.items():
        if getattr(config, name) != value:
            raise ValueError(
                f"policy.{name}={getattr(config, name)!r} has no effect in {policy_type}: the ResNet is replaced by "
                f"the towers in policy.backbone (set --policy.backbone.dino / .siglip); leave it at {value!r}"
            )
