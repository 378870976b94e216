"""The start-up scan: readable / unreadable / frames per path, kind and camera, non-images and
too-small frames left out with their reason, overlapping --frames counted once."""

from __future__ import annotations

import logging
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from vla_dino.data import FrameDataset, deduplicate_sources, discover_sources, examples, scan_sources


@pytest.fixture()
def logs(tmp_path: Path) -> Path:
    root = tmp_path / "robot_logs"
    for episode in range(2):
        examples.write_image_folder(root / f"ep{episode}" / "front", 4, episode)  # 48×64 frames
        examples.write_image_folder(root / f"ep{episode}" / "wrist", 3, episode)
    (root / "ep1" / "wrist" / "frame_9.png").write_bytes(b"\x00 not a png at all")
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(root / "ep0" / "front" / "frame_7.png")
    return root


def test_report_counts_per_path_kind_and_camera(logs: Path) -> None:
    scan = scan_sources(discover_sources([logs]), [logs], frame_size=64, min_frame_side=16)
    rows = {(r.kind, r.camera): (r.episodes, r.frames, r.unreadable_files) for r in scan.rows}
    assert rows == {("images", "front"): (2, 8, 1), ("images", "wrist"): (2, 6, 1)}
    assert scan.readable_frames == 14 and len(scan.sources) == 4
    reasons = dict(scan.unreadable)
    assert "not a readable image" in reasons[str(logs / "ep1" / "wrist" / "frame_9.png")]
    tiny = reasons[str(logs / "ep0" / "front" / "frame_7.png")]
    assert "5×5 image, smaller than data.min_frame_side=16" in tiny
    # 48×64 frames are enlarged to 64²: a warning with the count and the smallest size
    assert scan.upscaled == 14 and scan.smallest == (64, 48)
    report = scan.report()
    assert report.splitlines()[0] == "frames: 14 readable in 4 episode-camera source(s), 2 unreadable file(s) left out"
    assert "camera front: 2 episode(s), 8 frame(s), 1 unreadable file(s)" in report
    assert "14 image frame(s) smaller than data.frame_size=64 (smallest 64×48)" in report
    # the dataset built from the scan never meets those two files
    dataset = FrameDataset(scan.sources, frame_size=32)
    assert len(dataset) == 14 and all(dataset[i] is not None for i in range(len(dataset)))


def test_overlapping_frames_paths_count_once(logs: Path, caplog: pytest.LogCaptureFixture) -> None:
    once = discover_sources([logs])
    with caplog.at_level(logging.WARNING):
        both = discover_sources([logs, logs / "ep0", logs / "ep0" / "front" / "frame_1.png", logs])
    assert sorted(s.path for s in both) == sorted(s.path for s in once)
    assert sum(s.num_frames for s in both) == sum(s.num_frames for s in once) == 16
    message = caplog.text
    assert "reached through more than one --frames path" in message
    assert f"{logs / 'ep0'} is inside {logs}" in message and "is given twice" in message
    kept, dropped = deduplicate_sources(once + once)
    assert dropped == len(once) and kept == once


def test_tiny_frames_of_any_kind_are_skipped_when_read(tmp_path: Path) -> None:
    """Videos and HDF5 frames are only sized when read: below min_frame_side they are skipped with the reason."""
    path = tmp_path / "tiny.hdf5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("observations/images/top", data=np.full((3, 5, 5, 3), 100, np.uint8))
    dataset = FrameDataset(discover_sources([path]), frame_size=32, min_frame_side=16)
    assert dataset[0] is None
    assert "5×5 frame, smaller than min_frame_side=16" in dataset.skipped_summary()
    assert FrameDataset(discover_sources([path]), frame_size=32)[0] is not None  # default: no floor


def test_scan_can_be_turned_off(logs: Path) -> None:
    scan = scan_sources(discover_sources([logs]), [logs], frame_size=64, check_files=False)
    assert scan.readable_frames == 16 and scan.unreadable == []  # found only when read
