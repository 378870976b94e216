"""Building blocks of the run: atomic rotating checkpoints, RNG state, the resumable sharded
sampler, the NaN guard, the collapse monitor and the metric logs."""

import itertools
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from vla_dino.pretrain.checkpoint import CheckpointManager, capture_rng_state, load_checkpoint, restore_rng_state, resolve_checkpoint
from vla_dino.pretrain.config import CollapseConfig
from vla_dino.pretrain.logger import MetricsLogger, read_metrics
from vla_dino.pretrain.monitor import CollapseMonitor, NonFiniteGuard
from vla_dino.pretrain.sampler import ResumableBatchSampler


def test_checkpoints_atomic_rotating(tmp_path: Path):
    manager = CheckpointManager(tmp_path / "checkpoints", keep_last=2)
    for step in (5, 10, 15):
        manager.save({"step": step, "model": {"w": torch.full((2,), float(step))}}, step)
    (tmp_path / "checkpoints" / "step_00000020.pt.tmp").write_bytes(b"half-written")  # a crash mid-write
    assert [s for s, _ in manager.checkpoints()] == [10, 15]
    assert manager.latest() == manager.path_for(15)
    assert resolve_checkpoint(tmp_path) == manager.path_for(15)  # a run folder resolves too
    state = load_checkpoint(manager.latest())
    assert state["step"] == 15 and torch.equal(state["model"]["w"], torch.full((2,), 15.0))
    assert not list((tmp_path / "checkpoints").glob("step_00000015.pt.tmp"))


def test_rng_state_round_trip_through_weights_only_file(tmp_path: Path):
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    torch.rand(5), np.random.rand(3), random.random(), np.random.randn()  # leaves a cached gaussian
    path = tmp_path / "rng.pt"
    torch.save(capture_rng_state(), path)
    expected = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)], np.random.randn(2))
    restore_rng_state(torch.load(path, weights_only=True))
    got = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)], np.random.randn(2))
    assert torch.equal(expected[0], got[0])
    np.testing.assert_array_equal(expected[1], got[1])
    assert expected[2] == got[2]
    np.testing.assert_array_equal(expected[3], got[3])


def _indices(batches: list[list[tuple[int, int]]], epoch: int) -> list[list[int]]:
    assert all(e == epoch for batch in batches for _, e in batch)  # every index carries its epoch
    return [[index for index, _ in batch] for batch in batches]


def test_sampler_shards_and_resumes():
    ranks = [ResumableBatchSampler(23, batch_size=3, seed=1, rank=r, world_size=2) for r in range(2)]
    assert ranks[0].batches_per_epoch == 3  # 23 // (3·2)
    epoch0 = [sum(_indices(list(itertools.islice(s.batches(0), 3)), 0), []) for s in ranks]
    assert not set(epoch0[0]) & set(epoch0[1]) and len(epoch0[0]) == 9  # disjoint shards, whole batches
    two_epochs = list(itertools.islice(ranks[0].batches(0), 6))  # runs on into the next epoch
    epoch1 = _indices(two_epochs[3:], 1)
    assert sum(epoch1, []) != epoch0[0]  # a new permutation each epoch
    assert _indices(list(itertools.islice(ranks[0].batches(1, 2), 1)), 1) == epoch1[2:]  # mid-epoch continues exactly
    with pytest.raises(ValueError, match="fewer than one global batch"):
        ResumableBatchSampler(5, batch_size=4, world_size=2)


def test_nonfinite_guard_counts_consecutive():
    guard = NonFiniteGuard(limit=3)
    for step, finite in enumerate([True, False, False, True, False, False]):
        guard.record(finite, step)
    assert not guard.should_stop and guard.streak == 2 and guard.first_bad_step == 4 and guard.total == 4
    guard.record(False, 6)
    assert guard.should_stop


def test_collapse_monitor_flags_each_mode():
    monitor = CollapseMonitor(CollapseConfig(min_feature_std=0.01, min_teacher_entropy=0.1, max_teacher_entropy_fraction=0.99,
                                             max_center_norm=10.0), num_prototypes=256)
    assert monitor.check({"feature_std": 0.05, "teacher_entropy": 3.0, "center_norm": 1.0}) == []
    assert "feature_std" in monitor.check({"feature_std": 0.001})[0]
    assert "one-hot" in monitor.check({"teacher_entropy": 0.01})[0]
    assert "uniform" in monitor.check({"teacher_entropy": float(np.log(256))})[0]
    assert "center_norm" in monitor.check({"center_norm": 50.0})[0]


def test_metrics_logger_truncates_on_resume(tmp_path: Path):
    logger = MetricsLogger(tmp_path, tensorboard=True)
    for step in range(1, 6):
        logger.log(step, {"loss": 1.0 / step, "nan_metric": float("nan")})
    logger.close()
    resumed = MetricsLogger(tmp_path, tensorboard=False, resume_step=3)  # steps 4, 5 came after the checkpoint
    resumed.log(4, {"loss": 0.5, "nan_metric": 0.0})
    resumed.close()
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and rows[-1]["loss"] == 0.5
    assert rows[0]["nan_metric"] == "nan"  # JSON-safe
    csv_lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert csv_lines[0] == "step,loss,nan_metric" and len(csv_lines) == 5
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
