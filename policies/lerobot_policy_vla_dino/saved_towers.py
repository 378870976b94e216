"""Policy checkpoints that carry their towers' architectures.

A policy's towers are built from sources in its config (`vision.dino`, `backbone.siglip`, …): a
hub id, or a folder such as a pretraining export. Its checkpoint's `model.safetensors` already
holds every tower weight, so the checkpoint also keeps each tower's transformers config in
`towers/`; loading builds the towers from those (architecture only) and then loads the weights.
A checkpoint thus loads on another machine (the robot's) with no hub access and without the
folders the towers first came from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lerobot.configs.policies import PreTrainedConfig
from torch import Tensor

from vla_dino.adapter.backbone import ARCHITECTURE_FILES, FusedBackbone

TOWERS_DIR = "towers"


class SavedTowersMixin:
    """Mixed into a `PreTrainedPolicy` subclass (before it in the bases) whose `__init__` takes
    `tower_architecture: Path | None` (a `FusedBackbone.save_architecture` folder, passed on to
    `FusedBackbone.from_config`). `tower_field` names the config field holding the tower sources;
    `fused_backbone()` returns the built towers."""

    tower_field: str

    def fused_backbone(self) -> FusedBackbone | None:
        raise NotImplementedError

    def _save_pretrained(self, save_directory: Path, state_dict: dict[str, Tensor] | None = None) -> None:
        super()._save_pretrained(save_directory, state_dict)  # type: ignore[misc]
        backbone = self.fused_backbone()
        if backbone is not None:  # no image features: nothing to keep
            backbone.save_architecture(Path(save_directory) / TOWERS_DIR)

    @classmethod
    def from_pretrained(cls, pretrained_name_or_path: str | Path, *, config: PreTrainedConfig | None = None,
                        **kwargs: Any) -> Any:
        """LeRobot's loader; a local checkpoint with saved architectures builds its towers from
        them (LeRobot passes `kwargs` on to `__init__`). The config is loaded as saved."""
        towers = Path(pretrained_name_or_path) / TOWERS_DIR
        if not (towers / ARCHITECTURE_FILES["dino"]).is_file():
            return super().from_pretrained(pretrained_name_or_path, config=config, **kwargs)  # type: ignore[misc]
        config = config or PreTrainedConfig.from_pretrained(pretrained_name_or_path)
        return super().from_pretrained(  # type: ignore[misc]
            pretrained_name_or_path, config=config, tower_architecture=towers, **kwargs
        )
