"""The rollout evaluator counts successes, returns and lengths correctly (a fake env with known outcomes)."""

import json
import math

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from lerobot_env_vla_dino.common import observation_space
from lerobot_env_vla_dino.evaluate import evaluate, wilson_interval

MAX_STEPS = 6


class KnownOutcomeEnv(gym.Env):
    """Episode with seed s succeeds at step 3 when s % 3 == 0, else runs to the time limit.
    Reward 1 per step, so the return equals the length."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}
    task_description = "fake"

    def __init__(self, image_size: int = 8):
        self.camera_names = ["cam"]
        self.observation_space = observation_space(["cam"], (image_size, image_size), 2)
        self.action_space = spaces.Box(-1, 1, (2,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.seed_value, self.t = seed, 0
        return self._obs(), {"is_success": False}

    def step(self, action):
        self.t += 1
        success = self.seed_value is not None and self.seed_value % 3 == 0 and self.t == 3
        return self._obs(), 1.0, success, False, {"is_success": success}

    def _obs(self):
        frame = np.full((8, 8, 3), self.t * 10, np.uint8)
        return {"pixels": {"cam": frame}, "agent_pos": np.zeros(2, np.float32)}


gym.register("vla_dino_test/KnownOutcome-v0", entry_point=KnownOutcomeEnv, max_episode_steps=MAX_STEPS)


@pytest.mark.parametrize("num_envs", [1, 3])
def test_counts_known_outcomes(tmp_path, num_envs):
    seeds = range(10, 17)  # 7 episodes: the last wave of 3 is partial
    calls = []
    result = evaluate(
        lambda obs: calls.append(obs) or np.zeros(2, np.float32), "vla_dino_test/KnownOutcome-v0", num_episodes=7,
        seed=10, out_dir=tmp_path, num_videos=2, num_envs=num_envs,
    )
    expected = [s % 3 == 0 for s in seeds]
    assert result.successes == expected
    assert result.lengths == [3 if ok else MAX_STEPS for ok in expected]
    assert result.returns == [float(n) for n in result.lengths]
    assert result.success_rate == pytest.approx(2 / 7)
    assert result.success_ci95 == pytest.approx(wilson_interval(2, 7))
    assert set(calls[0]) == {"pixels", "agent_pos"} and calls[0]["pixels"]["cam"].shape == (8, 8, 3)
    saved = json.loads((tmp_path / "eval_result.json").read_text())
    assert saved["successes"] == expected and saved["num_episodes"] == 7
    assert [p.split("/")[-1] for p in result.videos] == ["episode_0.mp4", "episode_1.mp4"]
    import av

    with av.open(result.videos[0]) as container:  # episode 0: reset frame + 6 steps
        assert sum(1 for _ in container.decode(video=0)) == MAX_STEPS + 1


def test_wilson_interval_formula():
    low, high = wilson_interval(8, 10)
    z = 1.959963984540054
    p, n = 0.8, 10
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert (low, high) == pytest.approx((centre - half, centre + half))
    assert (low, high) == pytest.approx((0.4902, 0.9433), abs=1e-4)  # the textbook value
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(5, 5)[1] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        wilson_interval(0, 0)
