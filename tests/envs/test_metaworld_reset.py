"""Meta-World's reset() can hand back the previous episode's scene: some tasks' `reset_model` move
bodies through the model (drawer-open-v3: `model.body("drawer").pos = …` after the hand reset's last
mj_step, metaworld 3.1.1 envs/sawyer_drawer_open_v3.py), so data.xpos, the observation and the
first rendered frame are stale until the next step. Before the fix 17 of the 50 v3 tasks showed it
(a second reset with another seed: frame 0 differed from a render of the same state after
mj_forward). The env recomputes the state after every reset; frame 0 must be a fresh render."""

import mujoco
import numpy as np
import pytest

from lerobot_env_vla_dino.metaworld_env import MetaWorldEnv

# drawer-open-v3 is the task it was seen on; pick-place-v3 (stale too) is one the demos and experts use.
TASKS = ["drawer-open-v3", "pick-place-v3"]


@pytest.mark.parametrize("task", TASKS)
def test_first_frame_after_reset_is_a_fresh_render(task: str) -> None:
    env = MetaWorldEnv(task, cameras=("corner",), image_size=48)
    try:
        env.reset(seed=0)
        for _ in range(3):
            env.step(env.action_space.sample())
        obs, info = env.reset(seed=1)  # another scene: the bodies move
        first = obs["pixels"]["corner"].copy()
        obj_pos = info["state"]["obj_pos"].copy()
        mujoco.mj_forward(env.sim.model, env.sim.data)
        np.testing.assert_array_equal(first, env.cameras.render(env.sim.data)["corner"])
        np.testing.assert_allclose(obj_pos, env.sim._get_pos_objects()[:3], rtol=0, atol=1e-6)
        # ... and the same scene as a new env reset to that seed: no trace of the previous episode
        fresh_env = MetaWorldEnv(task, cameras=("corner",), image_size=48)
        try:
            fresh_obs, fresh_info = fresh_env.reset(seed=1)
            np.testing.assert_array_equal(first, fresh_obs["pixels"]["corner"])
            np.testing.assert_allclose(obj_pos, fresh_info["state"]["obj_pos"], rtol=0, atol=1e-6)
        finally:
            fresh_env.close()
    finally:
        env.close()


def test_reset_observation_keeps_metaworld_layout() -> None:
    """39-d: current (18) stacked twice (reset has no previous frame), then the goal."""
    env = MetaWorldEnv("drawer-open-v3", cameras=("corner",), image_size=32)
    try:
        env.reset(seed=2)
        raw = env.raw_obs
        assert raw.shape == (39,)
        np.testing.assert_array_equal(raw[:18], raw[18:36])
        np.testing.assert_allclose(raw[36:], env.sim._get_pos_goal(), atol=1e-9)
    finally:
        env.close()
