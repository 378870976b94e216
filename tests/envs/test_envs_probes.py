"""Probes recover planted linear signals and report chance on noise."""

import numpy as np
import pytest
import torch

from lerobot_env_vla_dino.probes import _ridge_predictions, knn_retrieval, ridge_probe


def _data(seed=0, n_episodes=20, per_episode=30, dim=48):
    rng = np.random.default_rng(seed)
    n = n_episodes * per_episode
    features = rng.normal(size=(n, dim))
    groups = np.repeat(np.arange(n_episodes), per_episode)
    return rng, features, groups


def test_planted_linear_signal_and_noise():
    rng, features, groups = _data()
    weights = rng.normal(size=(features.shape[1], 3))
    targets = {
        "planted": features @ weights + 0.01 * rng.normal(size=(len(features), 3)),
        "noise": rng.normal(size=(len(features), 2)),
    }
    result = ridge_probe(features, targets, groups)
    assert result.r2["planted"] > 0.99
    assert result.r2["noise"] < 0.02  # chance: no better than the training mean
    assert result.num_train + result.num_test == len(features)


def test_ridge_matches_normal_equations():
    rng = np.random.default_rng(1)
    x, y, x_eval = rng.normal(size=(50, 6)), rng.normal(size=(50, 2)), rng.normal(size=(5, 6))
    alpha = 3.0
    prediction = _ridge_predictions(*(torch.tensor(a) for a in (x, y, x_eval)), torch.tensor([alpha]))[0].numpy()
    mean, std = x.mean(0), x.std(0, ddof=1)
    xs, xe = (x - mean) / std, (x_eval - mean) / std
    w = np.linalg.solve(xs.T @ xs + alpha * np.eye(6), xs.T @ (y - y.mean(0)))
    np.testing.assert_allclose(prediction, xe @ w + y.mean(0), rtol=1e-8, atol=1e-10)


def test_knn_retrieval_finds_similar_states():
    rng, _, groups = _data(n_episodes=10, per_episode=20)
    states = rng.uniform(size=(len(groups), 2))
    informative = np.concatenate([states, 0.01 * rng.normal(size=(len(groups), 8))], 1) + 1.0
    good = knn_retrieval(informative, states, groups, k=5)
    bad = knn_retrieval(rng.normal(size=(len(groups), 10)), states, groups, k=5)
    assert good.ratio < 0.3
    assert bad.ratio == pytest.approx(1.0, abs=0.15)


def test_probe_errors_are_clear():
    _, features, groups = _data(n_episodes=1)
    with pytest.raises(ValueError, match="at least 2 episodes"):
        ridge_probe(features, {"y": features[:, 0]}, groups)
    with pytest.raises(ValueError, match="episode ids"):
        ridge_probe(features, {"y": features[:, 0]}, groups[:-1])


def test_probe_dataset_end_to_end(tmp_path):
    """Frames of a collected dataset → tiny DinoEncoder features → probes of the simulator state."""
    from vla_dino.encoder import DinoEncoder

    from lerobot_env_vla_dino.collect import collect_demos
    from lerobot_env_vla_dino.probes import probe_dataset

    root = collect_demos("vla_dino/FetchPush-v0", 4, tmp_path / "ds", image_size=28, use_videos=False)
    report = probe_dataset(root, DinoEncoder.from_size("tiny", image_size=28), k=3)
    # The goal moves between episodes and the gripper and block within them: all are probed.
    assert {"gripper_pos", "goal_pos", "obj_pos"} <= set(report.probe.r2)
    assert all(np.isfinite(v) and v <= 1.0 for v in report.probe.r2.values())
    assert report.feature_dim == 64 and report.retrieval.k == 3 and report.retrieval.random_state_distance > 0
