"""`diffusion_vla_dino`: LeRobot's Diffusion Policy with its ResNet replaced by our towers.

Every Diffusion field keeps its meaning (one flag: `--policy.type=diffusion_vla_dino`); the towers
are set with `--policy.backbone.*` (see `TowerBackboneConfig`) and train at `optimizer_lr_backbone`.
Images reach the towers un-normalised in [0, 1] (VISUAL: IDENTITY); STATE and ACTION keep
Diffusion's MIN_MAX. Diffusion's optional resize/crop still runs before the towers' own resize.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lerobot.configs import NormalizationMode, PreTrainedConfig
from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig

from lerobot_policy_vla_dino.feature_map import TowerBackboneConfig


@PreTrainedConfig.register_subclass("diffusion_vla_dino")
@dataclass
class DiffusionVlaDinoConfig(DiffusionConfig):
    backbone: TowerBackboneConfig = field(default_factory=TowerBackboneConfig)
    optimizer_lr_backbone: float = 1e-5

    normalization_mapping: dict[str, NormalizationMode] = field(
        default_factory=lambda: {
            "VISUAL": NormalizationMode.IDENTITY,
            "STATE": NormalizationMode.MIN_MAX,
            "ACTION": NormalizationMode.MIN_MAX,
        }
    )
    # Diffusion builds a torchvision ResNet before we swap it out: never download its ImageNet weights.
    pretrained_backbone_weights: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pretrained_backbone_weights is not None:
            raise ValueError(
                "policy.pretrained_backbone_weights must be None for diffusion_vla_dino: the ResNet is replaced by "
                "the towers in policy.backbone, so its torchvision weights would only be downloaded and dropped"
            )
