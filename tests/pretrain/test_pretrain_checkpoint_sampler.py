"""Checkpoints verified on load (manifest written after the payload; damaged ones named, moved
aside, the previous one used) and the sampler position that survives batch-size changes."""

from __future__ import annotations

import itertools
import json
import logging
import re
from pathlib import Path

import pytest
import torch

from vla_dino.pretrain.checkpoint import CheckpointManager, damage_reason, load_checkpoint, load_latest, manifest_path
from vla_dino.pretrain.errors import CheckpointDamagedError, CheckpointWriteError, ResumeError
from vla_dino.pretrain.sampler import ResumableBatchSampler


def _manager(tmp_path: Path, steps=(2, 4, 6)) -> CheckpointManager:
    manager = CheckpointManager(tmp_path / "checkpoints", keep_last=3)
    for step in steps:
        manager.save({"step": step, "model": {"w": torch.full((64,), float(step))}}, step)
    return manager


def test_manifest_written_after_payload_and_rotated(tmp_path: Path) -> None:
    manager = _manager(tmp_path, steps=(2, 4, 6, 8))
    names = sorted(p.name for p in manager.directory.iterdir())
    assert names == [f"step_{s:08d}.pt{x}" for s in (4, 6, 8) for x in ("", ".sha256.json")]
    record = json.loads(manifest_path(manager.path_for(8)).read_text())
    assert record["bytes"] == manager.path_for(8).stat().st_size and len(record["sha256"]) == 64 and record["step"] == 8
    assert damage_reason(manager.path_for(8)) is None


@pytest.mark.parametrize("damage, reason", [
    (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "truncated or overwritten"),
    (lambda p: p.write_bytes(b""), "empty file (0 bytes)"),
    (lambda p: p.write_bytes(p.read_bytes()[:-40] + bytes(40)), "SHA-256 mismatch"),
])
def test_damaged_latest_is_named_moved_aside_and_previous_used(tmp_path: Path, caplog, damage, reason) -> None:
    manager = _manager(tmp_path)
    damage(manager.path_for(6))
    with pytest.raises(CheckpointDamagedError, match=re.escape(f"step_00000006.pt is damaged: {reason}")):
        load_checkpoint(manager.path_for(6))
    with caplog.at_level(logging.WARNING):
        path, state = load_latest(manager)
    assert path == manager.path_for(4) and state["step"] == 4
    assert f"step_00000006.pt is damaged: {reason}" in caplog.text and "moved it to" in caplog.text
    moved = manager.directory / "damaged" / "step_00000006.pt"
    assert moved.is_file() and reason in (moved.parent / "step_00000006.pt.reason.txt").read_text()
    assert [s for s, _ in manager.checkpoints()] == [2, 4]  # out of rotation and of latest()


def test_unverifiable_file_that_torch_cannot_read_is_named(tmp_path: Path) -> None:
    """No manifest (an older version's checkpoint): loaded if torch can, named if it cannot."""
    manager = _manager(tmp_path, steps=(2, 4))
    manifest_path(manager.path_for(2)).unlink()
    assert load_checkpoint(manager.path_for(2))["step"] == 2
    manifest_path(manager.path_for(4)).unlink()
    manager.path_for(4).write_bytes(b"PK\x03\x04 half a zip")
    with pytest.raises(CheckpointDamagedError, match=r"step_00000004.pt cannot be read \("):
        load_checkpoint(manager.path_for(4))
    assert load_latest(manager, move_aside=False)[1]["step"] == 2
    assert manager.path_for(4).is_file()  # not moved by a process that does not own the folder


def test_every_checkpoint_damaged_is_one_error_naming_them(tmp_path: Path) -> None:
    manager = _manager(tmp_path, steps=(2, 4))
    for step in (2, 4):
        manager.path_for(step).write_bytes(b"")
    with pytest.raises(ResumeError, match="no loadable checkpoint in .*step_00000004.pt is damaged.*step_00000002.pt is damaged"):
        load_latest(manager)
    assert load_latest(CheckpointManager(tmp_path / "none", keep_last=1)) is None


def test_failed_write_leaves_previous_checkpoints(tmp_path: Path, monkeypatch) -> None:
    manager = _manager(tmp_path, steps=(2,))

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(CheckpointWriteError, match="could not write checkpoint .*step_00000004.pt.*No space left.*step_00000002.pt"):
        manager.save({"step": 4, "model": {}}, 4)
    assert sorted(p.name for p in manager.directory.iterdir()) == ["step_00000002.pt", "step_00000002.pt.sha256.json"]


def test_sampler_position_survives_batch_size_and_world_size_changes() -> None:
    """After b batches the ranks have consumed exactly perm[:b·B·W]; any other (B', W') continues there."""
    old = [ResumableBatchSampler(40, batch_size=3, seed=5, rank=r, world_size=2) for r in range(2)]
    seen = [[index for batch in itertools.islice(s.batches(0), 4) for index, _ in batch] for s in old]  # 4 batches a rank
    done = old[0].samples_done(4)
    assert done == 24
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(5 + 0)).tolist()
    assert sorted(seen[0] + seen[1]) == sorted(perm[:done])
    new = ResumableBatchSampler(40, batch_size=8, seed=5)
    epoch, batch, repeated = new.position_for_samples(0, done)
    assert (epoch, batch, repeated) == (0, 3, 0) and new.batches_per_epoch == 5
    assert next(new.batches(epoch, batch)) == [(index, 0) for index in perm[24:32]]  # the next unseen samples
    assert ResumableBatchSampler(40, batch_size=5, seed=5).position_for_samples(0, done) == (0, 4, 4)  # 4 seen again
    assert ResumableBatchSampler(40, batch_size=16, seed=5).position_for_samples(0, 36) == (1, 0, 0)  # rest < a batch
