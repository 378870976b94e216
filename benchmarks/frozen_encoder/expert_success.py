"""Success rate of a scripted expert over seeded episodes (seeds start..start+N−1), with a 95% Wilson interval.

    python benchmarks/frozen_encoder/expert_success.py --env_id=vla_dino/PushT-v0 --num_episodes=100
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import draccus
import gymnasium as gym
import numpy as np

import lerobot_env_vla_dino  # noqa: F401
from lerobot_env_vla_dino.evaluate import wilson_interval
from lerobot_env_vla_dino.experts import make_expert


@dataclass
class ExpertSuccessConfig:
    env_id: str = "vla_dino/PushT-v0"
    num_episodes: int = 100
    seed: int = 0
    image_size: int = 32  # pictures are rendered but unused by the expert: keep them small


def main(config: ExpertSuccessConfig) -> None:
    env = gym.make(config.env_id, image_size=config.image_size)
    expert = make_expert(env)
    successes, lengths, failed = [], [], []
    start = time.perf_counter()
    for seed in range(config.seed, config.seed + config.num_episodes):
        env.reset(seed=seed)
        expert.reset()
        for step in range(env.spec.max_episode_steps):
            _, _, terminated, truncated, info = env.step(expert(env))
            if terminated or truncated:
                break
        successes.append(info["is_success"])
        lengths.append(step + 1)
        if not info["is_success"]:
            failed.append(seed)
    env.close()
    low, high = wilson_interval(sum(successes), len(successes))
    print(
        f"{config.env_id}: expert success {sum(successes)}/{len(successes)} = {np.mean(successes):.2f} "
        f"(95% CI {low:.2f}–{high:.2f}), mean length {np.mean(lengths):.1f} steps, failed seeds {failed}, "
        f"{time.perf_counter() - start:.0f} s"
    )


if __name__ == "__main__":
    main(draccus.parse(ExpertSuccessConfig))
