"""LeRobot integration: the env plugin types, LeRobot's own env factory, and evaluating a saved
LeRobot policy checkpoint with our evaluator."""

import importlib.metadata

import numpy as np
import pytest
from lerobot.configs import FeatureType
from lerobot.envs.factory import make_env, make_env_config
from lerobot.envs.utils import env_to_policy_features, preprocess_observation
from lerobot.policies.factory import get_policy_class, make_policy_config, make_pre_post_processors

import lerobot_env_vla_dino  # noqa: F401
from lerobot_env_vla_dino.evaluate import evaluate


def test_distribution_is_discoverable_by_lerobot():
    # LeRobot imports installed distributions named lerobot_env_* at start-up.
    assert importlib.metadata.distribution("lerobot_env_vla_dino").metadata["Name"] == "lerobot_env_vla_dino"


@pytest.mark.parametrize(
    "env_type, kwargs, camera, state_dim",
    [
        ("vla_dino_metaworld", dict(task="reach-v3"), "corner", 4),
        ("vla_dino_pusht", {}, "top", 2),
        ("vla_dino_fetch", dict(task="push"), "front", 5),
    ],
)
def test_lerobot_env_factory_builds_our_envs(env_type, kwargs, camera, state_dim):
    config = make_env_config(env_type, image_size=32, **kwargs)
    features = env_to_policy_features(config)
    assert features[f"observation.images.{camera}"].shape == (3, 32, 32)
    assert features["observation.state"].shape == (state_dim,)
    envs = make_env(config, n_envs=2)
    vector_env = envs[env_type][0]
    obs, _ = vector_env.reset(seed=[0, 1])
    batch = preprocess_observation(obs)
    assert set(batch) == {f"observation.images.{camera}", "observation.state"}
    assert batch[f"observation.images.{camera}"].shape == (2, 3, 32, 32)
    assert vector_env.call("_max_episode_steps")[0] > 0  # what lerobot-eval's rollout reads
    assert all(isinstance(t, str) and t for t in vector_env.call("task_description"))
    vector_env.close()


def test_evaluate_lerobot_checkpoint_folder(tmp_path):
    env_config = make_env_config("vla_dino_metaworld", task="reach-v3", image_size=32)
    features = env_to_policy_features(env_config)
    config = make_policy_config(
        "act", device="cpu", pretrained_backbone_weights=None, dim_model=32, n_heads=2, dim_feedforward=64,
        n_encoder_layers=1, n_decoder_layers=1, chunk_size=4, n_action_steps=4, use_vae=False,
    )
    config.input_features = {k: f for k, f in features.items() if f.type is not FeatureType.ACTION}
    config.output_features = {k: f for k, f in features.items() if f.type is FeatureType.ACTION}
    policy = get_policy_class("act")(config)
    preprocessor, postprocessor = make_pre_post_processors(config, dataset_stats=None)
    for part in (policy, preprocessor, postprocessor):
        part.save_pretrained(tmp_path / "ckpt")
    result = evaluate(
        tmp_path / "ckpt", "vla_dino/MetaWorld-reach-v3", num_episodes=2, max_steps=6, num_envs=2,
        env_kwargs=dict(image_size=32), out_dir=tmp_path / "eval", num_videos=1,
    )
    assert result.lengths == [6, 6] and len(result.videos) == 1
    assert np.isfinite(result.mean_return)
