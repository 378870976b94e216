"""`DiffusionVlaDinoPolicy`: LeRobot's `DiffusionPolicy` with each camera encoder's ResNet replaced
by our towers.

In every `DiffusionRgbEncoder` the ResNet trunk becomes a `TowerFeatureMap` and the spatial
softmax is rebuilt for the towers' (C, h, w) map; the keypoint projection, U-Net, noise scheduler,
loss and observation/action queues are LeRobot's own code.
"""

# No `from __future__ import annotations`: LeRobot reads the `config` annotation of `__init__` as a class
# (`issubclass(cfg_cls, signature(policy_cls.__init__).parameters["config"].annotation)`).
from pathlib import Path

from torch import nn

from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy, DiffusionRgbEncoder, SpatialSoftmax

from vla_dino.adapter.backbone import FusedBackbone

from lerobot_policy_vla_dino.configuration_diffusion_vla_dino import DiffusionVlaDinoConfig
from lerobot_policy_vla_dino.feature_map import TowerFeatureMap, split_backbone_params
from lerobot_policy_vla_dino.saved_towers import SavedTowersMixin


def _is_tower_parameter(name: str) -> bool:
    # diffusion.rgb_encoder[.<camera>].backbone.* (one encoder, or one per camera)
    return name.startswith("diffusion.rgb_encoder.") and ".backbone." in name


class DiffusionVlaDinoPolicy(SavedTowersMixin, DiffusionPolicy):
    config_class = DiffusionVlaDinoConfig
    name = "diffusion_vla_dino"
    tower_field = "backbone"

    def __init__(self, config: DiffusionVlaDinoConfig, tower_architecture: Path | None = None, **kwargs) -> None:
        super().__init__(config, **kwargs)
        if not config.image_features:
            return  # environment-state-only Diffusion: there is no image backbone to swap
        encoders = self.diffusion.rgb_encoder
        for encoder in encoders if isinstance(encoders, nn.ModuleList) else [encoders]:
            _swap_rgb_backbone(encoder, config, tower_architecture)

    def fused_backbone(self) -> FusedBackbone | None:
        encoders = self.diffusion.rgb_encoder
        first = encoders[0] if isinstance(encoders, nn.ModuleList) else encoders
        return first.backbone.towers if isinstance(first.backbone, TowerFeatureMap) else None

    def get_optim_params(self) -> list[dict]:
        """Tower parameters at `optimizer_lr_backbone`, everything else at the optimizer's lr."""
        return split_backbone_params(self, _is_tower_parameter, self.config.optimizer_lr_backbone)


def _swap_rgb_backbone(encoder: DiffusionRgbEncoder, config: DiffusionVlaDinoConfig, architecture: Path | None) -> None:
    towers = TowerFeatureMap(config.backbone, architecture)
    encoder.backbone = towers
    height, width = towers.grid_size
    encoder.pool = SpatialSoftmax((towers.out_channels, height, width), num_kp=config.spatial_softmax_num_keypoints)
