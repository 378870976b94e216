"""Loading a LeRobot policy checkpoint the way ``lerobot-rollout`` does, and LeRobot's own eager
inference of one chunk (the reference the runtime must match).

``PreTrainedConfig.from_pretrained`` → ``get_policy_class(type).from_pretrained`` →
``make_pre_post_processors(pretrained_path=...)``, so LeRobot's built-in policies and plugin
policies (our ``vla_dino`` types) load the same way. The runtime and the envs plugin's evaluator
both load through here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from lerobot.configs.policies import PreTrainedConfig
from lerobot.policies.factory import get_policy_class, make_pre_post_processors
from lerobot.policies.pretrained import PreTrainedPolicy
from lerobot.policies.utils import prepare_observation_for_inference
from lerobot.utils.import_utils import register_third_party_plugins


def resolve_checkpoint_dir(path: str | Path) -> Path:
    """Accept ``.../pretrained_model``, its parent checkpoint step folder, or a run's ``checkpoints/last``."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    if (path / "pretrained_model" / "config.json").is_file():
        return path / "pretrained_model"
    raise FileNotFoundError(
        f"{path}: not a LeRobot policy checkpoint (expected config.json here or in {path / 'pretrained_model'}; "
        "lerobot-train writes <output_dir>/checkpoints/<step>/pretrained_model)"
    )


def load_policy(
    path: str | Path, device: torch.device | str | None = "cpu"
) -> tuple[PreTrainedPolicy, Callable[[dict], dict], Callable[[torch.Tensor], torch.Tensor]]:
    """Load policy, preprocessor and postprocessor from a checkpoint folder as ``lerobot-rollout`` does.

    ``device=None`` keeps the device saved in the checkpoint's config. The postprocessor is left on
    the device (LeRobot's default moves actions to the CPU).
    """
    register_third_party_plugins()  # LeRobot plugin types (lerobot_policy_*) register on import
    path = resolve_checkpoint_dir(path)
    config = PreTrainedConfig.from_pretrained(path)
    device = torch.device(config.device if device is None else device)
    config.pretrained_path = path
    config.device = device.type
    policy = get_policy_class(config.type).from_pretrained(path, config=config)
    policy.to(device).eval()
    overrides = {"device_processor": {"device": str(device)}}
    preprocessor, postprocessor = make_pre_post_processors(
        config, pretrained_path=str(path), preprocessor_overrides=overrides, postprocessor_overrides=overrides
    )
    return policy, preprocessor, postprocessor


@torch.no_grad()
def lerobot_predict_chunk(
    policy: PreTrainedPolicy,
    preprocessor: Callable[[dict], dict],
    postprocessor: Callable[[torch.Tensor], torch.Tensor],
    observation: Mapping[str, np.ndarray],
    device: torch.device | str,
    task: str | None = None,
) -> np.ndarray:
    """Plain eager LeRobot inference of one chunk: the reference the runtime must match."""
    batch = prepare_observation_for_inference({k: v.copy() for k, v in observation.items()}, torch.device(device), task)
    actions = postprocessor(policy.predict_action_chunk(preprocessor(batch)))
    return actions[0].float().cpu().numpy()
