"""The probe during pretraining (held-out episodes, label-free metrics, its monitor) and the
collapse monitor's near-uniform-target check."""

import math
from pathlib import Path

import pytest
import torch

from vla_dino.data.base import FrameSource
from vla_dino.data.examples import write_image_folder
from vla_dino.pretrain.config import CollapseConfig, load_config, preset_path
from vla_dino.pretrain.logger import read_metrics
from vla_dino.pretrain.monitor import CollapseMonitor
from vla_dino.pretrain.probe import (
    ProbeFrames,
    ProbeMonitor,
    changed_view,
    hold_out_sources,
    rankme,
    retrieval_hits,
)
from vla_dino.pretrain.train import train


def test_rankme_counts_equal_directions():
    assert rankme(torch.eye(6)) == pytest.approx(6.0, rel=1e-6)  # six equal singular values
    rank_one = torch.outer(torch.arange(1.0, 9.0), torch.randn(5))
    assert rankme(rank_one) == pytest.approx(1.0, abs=1e-6)


def test_retrieval_perfect_and_constant_encoders():
    episode = torch.tensor([0, 0, 0, 1, 1, 1])
    index = torch.tensor([0, 1, 2, 0, 1, 2])
    features = torch.eye(6)
    hits, chance = retrieval_hits(features, features, episode, index, window=0)
    assert hits == 1.0  # each query finds itself
    assert chance == pytest.approx(1 / 6)  # one of six gallery rows counts
    # a constant encoder: argmax picks gallery row 0 (episode 0, frame 0) for every query;
    # with window 1 that is a hit for queries (0, 0) and (0, 1) only
    constant = torch.ones(6, 4)
    hits, chance = retrieval_hits(constant, constant, episode, index, window=1)
    assert hits == pytest.approx(2 / 6)
    assert chance == pytest.approx((2 + 3 + 2) * 2 / 6 / 6)


def test_changed_view_is_a_fixed_photometric_change():
    pixels = torch.rand(4, 3, 8, 8)
    a, b = changed_view(pixels, seed=3), changed_view(pixels, seed=3)
    assert torch.equal(a, b) and a.shape == pixels.shape
    assert 0.0 <= a.min() and a.max() <= 1.0
    assert (a - pixels).abs().mean() > 0.02


def test_probe_monitor_warns_on_drop_and_on_plateau():
    monitor = ProbeMonitor(patience=2, max_drop=0.1, min_gain=0.01)
    metric = monitor.metric
    assert monitor.check(0, {metric: 0.2}) == []
    assert monitor.check(1, {metric: 0.5}) == []  # new best
    assert monitor.check(2, {metric: 0.5}) == []  # stale 1
    plateau = monitor.check(3, {metric: 0.505})  # stale 2 = patience
    assert len(plateau) == 1 and "not improved" in plateau[0]
    drop = monitor.check(4, {metric: 0.3})
    assert len(drop) == 1 and "fell to 0.300 from its best 0.500 at step 1" in drop[0]
    restored = ProbeMonitor()
    restored.load_state_dict(monitor.state_dict())
    assert (restored.best, restored.best_step, restored.stale) == (0.5, 1, 3)


def test_probe_monitor_on_rankme_is_relative_to_the_best():
    monitor = ProbeMonitor("probe/rankme", max_drop=0.1, patience=10, min_gain=0.01)
    assert monitor.check(0, {"probe/rankme": 20.0}) == []
    assert monitor.check(1, {"probe/rankme": 18.5}) == []  # 7.5 % below the best: within 10 %
    assert len(monitor.check(2, {"probe/rankme": 17.5})) == 1  # 12.5 % below


def _source(episode: str, camera: str) -> FrameSource:
    return FrameSource(kind="images", path=Path("/logs"), episode=episode, camera=camera, num_frames=5)


def test_hold_out_keeps_an_episodes_cameras_together():
    sources = [_source(f"ep{e}", cam) for e in range(10) for cam in ("front", "wrist")]
    train_sources, held = hold_out_sources(sources, fraction=0.2, seed=0)
    held_episodes = {s.episode for s in held}
    assert len(held_episodes) == 2 and len(held) == 4  # both cameras of each held-out episode
    assert not held_episodes & {s.episode for s in train_sources}
    assert len(train_sources) + len(held) == len(sources)
    assert hold_out_sources(sources, 0.01, seed=0)[1]  # at least one episode
    with pytest.raises(ValueError, match="at least 2 episodes"):
        hold_out_sources([_source("ep0", "front"), _source("ep0", "wrist")], 0.5, seed=0)


def test_probe_frames_validate_lengths():
    with pytest.raises(ValueError, match="same length"):
        ProbeFrames(torch.zeros(3, 3, 4, 4, dtype=torch.uint8), torch.zeros(2), torch.zeros(3))


def test_collapse_monitor_flags_persistent_near_uniform_targets():
    config = CollapseConfig(near_uniform_fraction=0.9, flat_kl=0.02, persist_checks=3, max_teacher_entropy_fraction=0.999)
    monitor = CollapseMonitor(config, num_prototypes=64)
    flat = {"teacher_entropy": 0.95 * math.log(64), "dino_kl": 0.01, "feature_std": 0.1}
    assert monitor.check(flat) == [] and monitor.check(flat) == []
    third = monitor.check(flat)
    assert len(third) == 1 and "near-uniform targets" in third[0]
    assert monitor.check(flat) == []  # said once per streak
    assert monitor.check({**flat, "dino_kl": 0.5}) == []  # the student learns again: streak resets
    assert monitor.check(flat) == [] and monitor.check(flat) == [] and len(monitor.check(flat)) == 1


@pytest.fixture(scope="module")
def probe_run(tmp_path_factory) -> tuple[Path, object]:
    frames = tmp_path_factory.mktemp("logs")
    for episode in range(5):
        write_image_folder(frames / f"episode_{episode}" / "front", num_frames=6, episode=episode)
    out = tmp_path_factory.mktemp("probe_run")
    config = load_config(preset_path("cpu_smoke"), {
        "data.frames": [str(frames)], "output_dir": str(out), "data.batch_size": 4, "data.num_workers": 0,
        "train.steps": 4, "checkpoint.every_steps": 100, "log.every_steps": 1, "log.progress_bar": False,
        "log.tensorboard": False, "export.at_end": False, "log.probe_every_steps": 2, "log.probe_holdout_fraction": 0.2,
    })
    return out, train(config)


def test_run_probes_held_out_episodes(probe_run):
    out, result = probe_run
    assert result.stopped_by == "finished"
    rows = read_metrics(out / "probe.jsonl")
    assert [r["step"] for r in rows] == [0, 2, 4]  # the start, every 2 steps, the last step
    for row in rows:
        assert 0.0 <= row["probe/retrieval_changed"] <= 1.0
        assert row["probe/retrieval_chance"] == pytest.approx(rows[0]["probe/retrieval_chance"])
        assert 1.0 <= row["probe/rankme"]
    metrics = read_metrics(out / "metrics.jsonl")
    assert all(r["dino_kl"] > -1e-5 for r in metrics)  # KL ≥ 0
    # the entropy of the batch-mean target is at least the mean entropy (concavity)
    assert all(r["teacher_batch_entropy"] >= r["teacher_entropy"] - 1e-5 for r in metrics)


def test_probe_needs_two_episodes(tmp_path):
    write_image_folder(tmp_path / "logs" / "episode_0" / "front", num_frames=8, episode=0)
    config = load_config(preset_path("cpu_smoke"), {
        "data.frames": [str(tmp_path / "logs")], "output_dir": str(tmp_path / "out"), "data.batch_size": 4,
        "data.num_workers": 0, "train.steps": 2, "log.probe_every_steps": 1, "log.progress_bar": False,
        "log.tensorboard": False, "export.at_end": False,
    })
    with pytest.raises(Exception, match="log.probe_every_steps needs at least 2 episodes"):
        train(config)
