"""`ACTVlaDinoPolicy`: LeRobot's `ACTPolicy` with the ResNet feature map replaced by our towers.

Only the image backbone and the 1×1 projection that reads its channels change; the transformer,
VAE, loss, action queue and temporal ensembling are LeRobot's own code. Tower parameters live
under `model.backbone`, so ACT's `get_optim_params` gives them `optimizer_lr_backbone`.
"""

# No `from __future__ import annotations`: LeRobot reads the `config` annotation of `__init__` as a class
# (`issubclass(cfg_cls, signature(policy_cls.__init__).parameters["config"].annotation)`).
from pathlib import Path

from torch import nn

from lerobot.policies.act.modeling_act import ACTPolicy

from vla_dino.adapter.backbone import FusedBackbone

from lerobot_policy_vla_dino.configuration_act_vla_dino import ACTVlaDinoConfig
from lerobot_policy_vla_dino.feature_map import LayerDict, TowerFeatureMap
from lerobot_policy_vla_dino.saved_towers import SavedTowersMixin


class ACTVlaDinoPolicy(SavedTowersMixin, ACTPolicy):
    config_class = ACTVlaDinoConfig
    name = "act_vla_dino"
    tower_field = "backbone"

    def __init__(self, config: ACTVlaDinoConfig, tower_architecture: Path | None = None, **kwargs) -> None:
        super().__init__(config, **kwargs)
        if not config.image_features:
            return  # environment-state-only ACT: there is no image backbone to swap
        towers = TowerFeatureMap(config.backbone, tower_architecture)
        self.model.backbone = LayerDict(towers)
        self.model.encoder_img_feat_input_proj = nn.Conv2d(towers.out_channels, config.dim_model, kernel_size=1)

    def fused_backbone(self) -> FusedBackbone | None:
        backbone = self.model.backbone
        return backbone.module.towers if isinstance(backbone, LayerDict) else None
