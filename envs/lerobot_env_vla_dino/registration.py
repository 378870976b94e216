"""Gymnasium ids of our envs: `vla_dino/MetaWorld-<task>` (all 50 v3 tasks), `vla_dino/PushT-v0`,
`vla_dino/Fetch{Reach,Push,PickAndPlace,Slide}-v0`. Construction kwargs (`cameras`,
`image_size`, `terminate_on_success`, `max_episode_steps`) go through `gymnasium.make`."""

from __future__ import annotations

import gymnasium as gym

from lerobot_env_vla_dino.metaworld_env import TASK_NAMES as METAWORLD_TASKS

NAMESPACE = "vla_dino"
METAWORLD_MAX_STEPS = 500  # Meta-World's own episode limit
PUSHT_MAX_STEPS = 300  # gym-pusht's
FETCH_MAX_STEPS = 50  # gymnasium-robotics'
FETCH_IDS = {"reach": "FetchReach-v0", "push": "FetchPush-v0", "pick_and_place": "FetchPickAndPlace-v0", "slide": "FetchSlide-v0"}


def metaworld_id(task: str) -> str:
    """'reach-v3' → 'vla_dino/MetaWorld-reach-v3'."""
    return f"{NAMESPACE}/MetaWorld-{task}"


def register_all() -> list[str]:
    """Registers every id (idempotent); returns them."""
    entries: dict[str, tuple[str, dict, int]] = {}
    for task in METAWORLD_TASKS:
        entries[metaworld_id(task)] = ("metaworld_env:MetaWorldEnv", {"task": task}, METAWORLD_MAX_STEPS)
    entries[f"{NAMESPACE}/PushT-v0"] = ("pusht_env:PushTEnv", {}, PUSHT_MAX_STEPS)
    for task, name in FETCH_IDS.items():
        entries[f"{NAMESPACE}/{name}"] = ("fetch_env:FetchEnv", {"task": task}, FETCH_MAX_STEPS)
    for env_id, (entry, kwargs, max_steps) in entries.items():
        if env_id not in gym.registry:
            gym.register(
                env_id,
                entry_point=f"lerobot_env_vla_dino.{entry}",
                kwargs=kwargs,
                max_episode_steps=max_steps,
                disable_env_checker=True,
            )
    return list(entries)


ENV_IDS: list[str] = register_all()
