"""Scripted experts solve their tasks on fixed seeds."""

import gymnasium as gym
import pytest

import lerobot_env_vla_dino  # noqa: F401
from lerobot_env_vla_dino.experts import make_expert
from lerobot_env_vla_dino.experts.metaworld import POLICY_CLASSES
from lerobot_env_vla_dino.metaworld_env import TASK_NAMES


def _run(env_id: str, seeds, max_steps: int | None = None) -> list[tuple[bool, int]]:
    env = gym.make(env_id, image_size=16)
    expert = make_expert(env)
    results = []
    for seed in seeds:
        env.reset(seed=seed)
        expert.reset()
        for step in range(max_steps or env.spec.max_episode_steps):
            _, _, terminated, truncated, info = env.step(expert(env))
            if terminated or truncated:
                break
        results.append((info["is_success"], step + 1))
    env.close()
    return results


def test_every_metaworld_task_has_its_policy():
    assert set(POLICY_CLASSES) == set(TASK_NAMES) and len(TASK_NAMES) == 50


@pytest.mark.parametrize(
    "env_id, seeds",
    [
        ("vla_dino/MetaWorld-reach-v3", (0, 1)),
        ("vla_dino/MetaWorld-push-v3", (0, 1)),
        ("vla_dino/PushT-v0", (0, 1)),
        ("vla_dino/FetchReach-v0", (0, 1, 2)),
        ("vla_dino/FetchPush-v0", (0, 1, 2)),
        ("vla_dino/FetchPickAndPlace-v0", (0, 1)),
    ],
)
def test_expert_succeeds(env_id, seeds):
    results = _run(env_id, seeds)
    assert all(success for success, _ in results), results


def test_fetch_slide_has_no_expert():
    env = gym.make("vla_dino/FetchSlide-v0", image_size=16)
    with pytest.raises(ValueError, match="no scripted Fetch expert"):
        make_expert(env)
    env.close()
