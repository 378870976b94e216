"""Pre/post processors of `diffusion_vla_dino`: LeRobot's Diffusion pipeline driven by
`DiffusionVlaDinoConfig.normalization_mapping` (VISUAL: IDENTITY, STATE/ACTION: MIN_MAX)."""

from lerobot.policies.diffusion.processor_diffusion import (
    make_diffusion_pre_post_processors as make_diffusion_vla_dino_pre_post_processors,
)

__all__ = ["make_diffusion_vla_dino_pre_post_processors"]
