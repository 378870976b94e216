"""Scripted experts: `expert = make_expert(env)`, `expert.reset()` per episode, `action = expert(env)`.

Experts are privileged: they read the simulator through `env.unwrapped` (Meta-World's full
observation, PushT's poses, Fetch's goal dict) and return an action in the env's action space.
"""

from __future__ import annotations

from typing import Protocol

import gymnasium as gym
import numpy as np

from lerobot_env_vla_dino.experts.fetch import FetchExpert
from lerobot_env_vla_dino.experts.metaworld import POLICY_CLASSES, MetaWorldExpert
from lerobot_env_vla_dino.experts.pusht import PushTExpert


class Expert(Protocol):
    def reset(self) -> None: ...

    def __call__(self, env: gym.Env) -> np.ndarray: ...


def make_expert(env: gym.Env) -> Expert:
    """The scripted expert for `env` (one of our envs, possibly wrapped)."""
    from lerobot_env_vla_dino.fetch_env import FetchEnv
    from lerobot_env_vla_dino.metaworld_env import MetaWorldEnv
    from lerobot_env_vla_dino.pusht_env import PushTEnv

    base = env.unwrapped
    if isinstance(base, MetaWorldEnv):
        return MetaWorldExpert(base.task)
    if isinstance(base, PushTEnv):
        return PushTExpert()
    if isinstance(base, FetchEnv):
        return FetchExpert(base.task)
    raise TypeError(f"no scripted expert for {type(base).__name__}; expected MetaWorldEnv, PushTEnv or FetchEnv")


__all__ = ["Expert", "make_expert", "MetaWorldExpert", "PushTExpert", "FetchExpert", "POLICY_CLASSES"]
