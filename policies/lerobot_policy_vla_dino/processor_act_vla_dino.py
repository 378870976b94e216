"""Pre/post processors of `act_vla_dino`: LeRobot's ACT pipeline (rename, batch, device, normalise;
unnormalise, cpu) driven by `ACTVlaDinoConfig.normalization_mapping` (VISUAL: IDENTITY)."""

from lerobot.policies.act.processor_act import make_act_pre_post_processors as make_act_vla_dino_pre_post_processors

__all__ = ["make_act_vla_dino_pre_post_processors"]
