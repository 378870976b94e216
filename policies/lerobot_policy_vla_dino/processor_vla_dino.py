"""Pre/post processors of `vla_dino`: LeRobot's default policy pipeline.

Pre: rename → add batch dim → device → normalise; post: unnormalise → cpu. The normaliser follows
`VlaDinoConfig.normalization_mapping`: VISUAL is IDENTITY because the tokenizer resizes and
normalises per tower (ImageNet mean/std for DINOv2, 0.5/0.5 for SigLIP) from [0, 1] images;
STATE / ENV / ACTION use the dataset's mean and std.
"""

from __future__ import annotations

from typing import Any

import torch
from lerobot.processor import PolicyAction, PolicyProcessorPipeline, make_default_pre_post_processors

from lerobot_policy_vla_dino.configuration_vla_dino import VlaDinoConfig


def make_vla_dino_pre_post_processors(
    config: VlaDinoConfig,
    dataset_stats: dict[str, dict[str, torch.Tensor]] | None = None,
) -> tuple[
    PolicyProcessorPipeline[dict[str, Any], dict[str, Any]],
    PolicyProcessorPipeline[PolicyAction, PolicyAction],
]:
    return make_default_pre_post_processors(config, dataset_stats, normalizer_device=config.device)
