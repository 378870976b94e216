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

from lerobot_policy_vla_dino.feature_map import TowerBackboneConfig, check_unused_resnet_fields


@PreTrainedConfig.register_subclass("act_vla_dino")
@dataclass
class ACTVlaDinoConfig(ACTConfig):
    backbone: TowerBackboneConfig = field(default_factory=TowerBackboneConfig)  # towers replacing ACT's ResNet; train at optimizer_lr_backbone

    # VISUAL stays un-normalised: the towers normalise per tower themselves. STATE/ACTION as ACT.
    normalization_mapping: dict[str, NormalizationMode] = field(
        default_factory=lambda: {
            "VISUAL": NormalizationMode.IDENTITY,
            "STATE": NormalizationMode.MEAN_STD,
            "ACTION": NormalizationMode.MEAN_STD,
        }
    )
    # ACT's ResNet fields, inherited but unused: the ResNet is replaced by policy.backbone. Kept at
    # their values (any other value is an error), so ACT recipes that set them fail loudly.
    vision_backbone: str = "resnet18"  # unused (policy.backbone replaces the ResNet); must stay resnet18
    pretrained_backbone_weights: str | None = None  # unused (policy.backbone replaces the ResNet); must stay None (no download)
    replace_final_stride_with_dilation: int = False  # unused (policy.backbone replaces the ResNet); must stay false

    def __post_init__(self) -> None:
        super().__post_init__()
        check_unused_resnet_fields(self, UNUSED_RESNET_FIELDS, "act_vla_dino")


# ACT builds a torchvision ResNet from these before we swap it out (never with downloaded weights).
UNUSED_RESNET_FIELDS = {"vision_backbone": "resnet18", "pretrained_backbone_weights": None,
                        "replace_final_stride_with_dilation": False}
