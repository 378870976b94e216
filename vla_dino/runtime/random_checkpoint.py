"""Write a random-init LeRobot policy checkpoint (config + weights + processors) for tests and benchmarks.

The folder has the layout ``lerobot-train`` writes to ``checkpoints/<step>/pretrained_model``
(``config.json``, ``model.safetensors``, ``policy_preprocessor.json``,
``policy_postprocessor.json`` and their state files), so everything that loads it goes
through LeRobot's real loading path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lerobot.configs.types import FeatureType, PolicyFeature
from lerobot.policies.factory import get_policy_class, make_policy_config, make_pre_post_processors
from lerobot.utils.import_utils import register_third_party_plugins


def camera_key(name: str) -> str:
    return f"observation.images.{name}"


def random_stats(features: dict[str, PolicyFeature], generator: torch.Generator) -> dict[str, dict[str, torch.Tensor]]:
    """Mean/std/min/max per feature (images per channel), so every normalisation mode has what it needs."""
    stats = {}
    for key, feature in features.items():
        shape = (feature.shape[0], 1, 1) if feature.type == FeatureType.VISUAL else tuple(feature.shape)
        mean = torch.rand(shape, generator=generator) * 0.5
        std = torch.rand(shape, generator=generator) * 0.5 + 0.5
        stats[key] = {"mean": mean, "std": std, "min": mean - 2 * std, "max": mean + 2 * std}
    return stats


def write_random_checkpoint(
    out_dir: str | Path,
    policy_type: str = "act",
    cameras: dict[str, tuple[int, int]] | None = None,
    state_dim: int = 4,
    action_dim: int = 3,
    seed: int = 0,
    **config_overrides: Any,
) -> Path:
    """Build ``policy_type`` with random weights and save it (plus processors) to ``out_dir``.

    ``cameras`` maps camera name to (height, width). ``config_overrides`` go to the policy
    config (e.g. ``chunk_size=5, dim_model=32, pretrained_backbone_weights=None`` for ACT).
    """
    register_third_party_plugins()
    cameras = cameras if cameras is not None else {"front": (32, 32)}
    input_features = {camera_key(name): PolicyFeature(FeatureType.VISUAL, (3, h, w)) for name, (h, w) in cameras.items()}
    input_features["observation.state"] = PolicyFeature(FeatureType.STATE, (state_dim,))
    output_features = {"action": PolicyFeature(FeatureType.ACTION, (action_dim,))}
    config = make_policy_config(
        policy_type,
        input_features=input_features,
        output_features=output_features,
        device="cpu",
        push_to_hub=False,
        **config_overrides,
    )
    torch.manual_seed(seed)
    policy = get_policy_class(policy_type)(config)
    generator = torch.Generator().manual_seed(seed)
    stats = random_stats({**input_features, **output_features}, generator)
    preprocessor, postprocessor = make_pre_post_processors(config, dataset_stats=stats)
    out_dir = Path(out_dir)
    policy.save_pretrained(out_dir)
    preprocessor.save_pretrained(out_dir)
    postprocessor.save_pretrained(out_dir)
    return out_dir


TINY_ACT = dict(
    chunk_size=8,
    n_action_steps=8,
    dim_model=32,
    n_heads=2,
    dim_feedforward=64,
    n_encoder_layers=1,
    n_decoder_layers=1,
    use_vae=False,
    pretrained_backbone_weights=None,  # no ImageNet download
)
