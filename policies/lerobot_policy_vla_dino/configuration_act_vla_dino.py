"""`act_vla_dino`: LeRobot's ACT with its ResNet replaced by our DINOv2 (+SigLIP) towers.

Every ACT field keeps its meaning, so an ACT recipe switches backbone with one flag
(`--policy.type=act` → `--policy.type=act_vla_dino`); the towers are set with
`--policy.backbone.dino=<size | hub id | folder | .pth>` (see `TowerBackboneConfig`).
Images reach the towers un-normalised in [0, 1] (VISUAL: IDENTITY); the towers resize and
normalise per tower themselves. STATE and ACTION keep ACT's MEAN_STD.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lerobot.configs import NormalizationMode, PreTrainedConfig
from lerobot.policies.act.configuration_act import ACTConfig

from lerobot_policy_vla_dino.feature_map import TowerBackboneConfig


@PreTrainedConfig.register_subclass("act_vla_dino")
@dataclass
class ACTVlaDinoConfig(ACTConfig):
    backbone: TowerBackboneConfig = field(default_factory=TowerBackboneConfig)

    normalization_mapping: dict[str, NormalizationMode] = field(
        default_factory=lambda: {
            "VISUAL": NormalizationMode.IDENTITY,
            "STATE": NormalizationMode.MEAN_STD,
            "ACTION": NormalizationMode.MEAN_STD,
        }
    )
    # ACT builds a torchvision ResNet before we swap it out: never download its ImageNet weights.
    pretrained_backbone_weights: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pretrained_backbone_weights is not None:
            raise ValueError(
                "policy.pretrained_backbone_weights must be None for act_vla_dino: the ResNet is replaced by "
                "the towers in policy.backbone, so its torchvision weights would only be downloaded and dropped"
            )
