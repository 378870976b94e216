"""Each env: the shared observation convention, upright images, per-episode seeding."""

import gymnasium as gym
import mujoco
import numpy as np
import pytest

import lerobot_env_vla_dino  # noqa: F401  (registers the ids)

SIZE = 64
ENVS = {
    "vla_dino/MetaWorld-reach-v3": dict(agent_dim=4, action_dim=4, camera="corner"),
    "vla_dino/PushT-v0": dict(agent_dim=2, action_dim=2, camera="top"),
    "vla_dino/FetchPush-v0": dict(agent_dim=5, action_dim=4, camera="front"),
}


@pytest.fixture(scope="module", params=list(ENVS))
def env_and_spec(request):
    env = gym.make(request.param, image_size=SIZE)
    yield env, ENVS[request.param]
    env.close()


def test_observation_convention(env_and_spec):
    env, spec = env_and_spec
    obs, info = env.reset(seed=0)
    assert set(obs) == {"pixels", "agent_pos"}
    frame = obs["pixels"][spec["camera"]]
    assert frame.shape == (SIZE, SIZE, 3) and frame.dtype == np.uint8
    assert frame.std() > 5  # a real picture, not a blank buffer
    assert obs["agent_pos"].shape == (spec["agent_dim"],) and obs["agent_pos"].dtype == np.float32
    assert env.observation_space.contains(obs)
    assert info["is_success"] is False
    assert all(v.dtype == np.float32 and v.ndim == 1 for v in info["state"].values())
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert env.action_space.shape == (spec["action_dim"],)
    assert isinstance(info["is_success"], bool) and isinstance(reward, float)
    assert env.observation_space.contains(obs)


def test_seeding_reproducible(env_and_spec):
    env, spec = env_and_spec
    camera = spec["camera"]
    actions = [env.action_space.sample() for _ in range(3)]
    runs = []
    for seed in (3, 3, 4):
        obs, info = env.reset(seed=seed)
        frames = [obs["pixels"][camera]]
        for action in actions:
            obs, *_, info = env.step(action)
            frames.append(obs["pixels"][camera])
        runs.append((np.stack(frames), info["state"]))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    for name in runs[0][1]:
        np.testing.assert_array_equal(runs[0][1][name], runs[1][1][name])
    assert not np.array_equal(runs[0][0][0], runs[2][0][0])  # another seed, another scene


def _paint_body_blue(model: mujoco.MjModel, body: str) -> None:
    body_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, body)
    geoms = np.flatnonzero(model.geom_bodyid == body_id)
    assert len(geoms), body
    model.geom_matid[geoms] = -1
    model.geom_rgba[geoms] = (0.0, 0.0, 1.0, 1.0)


def _blue_centroid(frame: np.ndarray) -> np.ndarray:
    rgb = frame.astype(int)
    mask = (rgb[..., 2] > 90) & (rgb[..., 2] > 2 * np.maximum(rgb[..., 0], rgb[..., 1]) + 30)
    assert mask.sum() >= 3, "blue marker not visible"
    return np.argwhere(mask).mean(0)


@pytest.mark.parametrize(
    "env_id, body, camera",
    [("vla_dino/MetaWorld-push-v3", "obj", "corner"), ("vla_dino/FetchPush-v0", "object0", "front")],
)
def test_mujoco_images_upright(env_id, body, camera):
    """The painted object appears where the pinhole model puts it (so no mirror or flip is left),
    and world-up is image-up (so the picture is not upside down)."""
    env = gym.make(env_id, image_size=96, cameras=(camera,))
    base = env.unwrapped
    _, info = env.reset(seed=1)
    _paint_body_blue(base.sim.model, body)
    obs = base._observation()
    centre = _blue_centroid(obs["pixels"][camera])
    position = info["state"]["obj_pos"]
    expected = np.array(base.project(camera, position))
    assert np.linalg.norm(centre - expected) < 4.0, (centre, expected)
    assert np.linalg.norm(centre - (96 - 1 - expected)) > 8.0  # the flipped picture would not match
    above = np.array(base.project(camera, position + np.array([0.0, 0.0, 0.1])))
    assert above[0] < expected[0] - 3  # 10 cm higher is higher in the picture
    env.close()


def test_pusht_image_matches_state():
    """PushT keeps gym-pusht's picture (LeRobot's PushT data): pixel (row, col) = (y, x) · size / 512."""
    env = gym.make("vla_dino/PushT-v0", image_size=SIZE)
    env.reset(seed=0)
    base = env.unwrapped
    base.sim._set_state(np.array([100.0, 400.0, 350.0, 150.0, 0.0]))
    frame = base._observation()["pixels"]["top"]
    rgb = frame.astype(int)
    pusher = (rgb[..., 2] > 150) & (rgb[..., 2] - rgb[..., 0] > 100) & (rgb[..., 2] - rgb[..., 1] > 60)  # RoyalBlue
    centre = np.argwhere(pusher).mean(0)
    np.testing.assert_allclose(centre, np.array([400.0, 100.0]) * SIZE / 512, atol=2.0)
    env.close()


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="unknown Meta-World task"):
        from lerobot_env_vla_dino.metaworld_env import MetaWorldEnv

        MetaWorldEnv("nope-v3")
    with pytest.raises(ValueError, match="not in the model"):
        gym.make("vla_dino/MetaWorld-reach-v3", cameras=("nope",))
    with pytest.raises(ValueError, match="unknown Fetch cameras"):
        gym.make("vla_dino/FetchReach-v0", cameras=("nope",))


def test_render_is_the_first_camera_frame():
    env = gym.make("vla_dino/PushT-v0", image_size=SIZE, render_mode="rgb_array")
    obs, _ = env.reset(seed=0)
    np.testing.assert_array_equal(env.render(), obs["pixels"]["top"])
    env.close()
    from lerobot_env_vla_dino.pusht_env import PushTEnv

    with pytest.raises(ValueError, match="rgb_array"):
        PushTEnv(render_mode="depth_array")
