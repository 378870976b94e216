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

from lerobot_policy_vla_dino.feature_map import TowerBackboneConfig, check_unused_resnet_fields


@PreTrainedConfig.register_subclass("diffusion_vla_dino")
@dataclass
class DiffusionVlaDinoConfig(DiffusionConfig):
    backbone: TowerBackboneConfig = field(default_factory=TowerBackboneConfig)  # towers replacing the ResNet of each camera encoder
    # AdamW lr of trainable tower parameters (the rest trains at optimizer_lr).
    optimizer_lr_backbone: float = 1e-5

    # VISUAL stays un-normalised: the towers normalise per tower themselves. STATE/ACTION as Diffusion.
    normalization_mapping: dict[str, NormalizationMode] = field(
        default_factory=lambda: {
            "VISUAL": NormalizationMode.IDENTITY,
            "STATE": NormalizationMode.MIN_MAX,
            "ACTION": NormalizationMode.MIN_MAX,
        }
    )
    # Diffusion's ResNet fields, inherited but unused: the ResNet is replaced by policy.backbone.
    # Kept at their values (any other value is an error), so Diffusion recipes that set them fail loudly.
    vision_backbone: str = "resnet18"  # unused (policy.backbone replaces the ResNet); must stay resnet18
    pretrained_backbone_weights: str | None = None  # unused (policy.backbone replaces the ResNet); must stay None (no download)
    use_group_norm: bool = False  # unused (policy.backbone replaces the ResNet); must stay false

    def __post_init__(self) -> None:
        super().__post_init__()
        check_unused_resnet_fields(self, UNUSED_RESNET_FIELDS, "diffusion_vla_dino")


# Diffusion builds a torchvision ResNet from these before we swap it out (never with downloaded weights).
UNUSED_RESNET_FIELDS = {"vision_backbone": "resnet18", "pretrained_backbone_weights": None, "use_group_norm": False}
