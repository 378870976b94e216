"""LeRobot datasets made with `LeRobotDataset.create` (image and video features) are found and read
through lerobot; their frames match what was recorded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from vla_dino.data import FrameDataset, NoFramesError, collate_frames, discover_sources, examples, square_resize


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lerobot_logs", numbered=False)
    examples.write_lerobot_dataset(root / "pick_images", num_episodes=2, num_frames=4, dtype="image")
    examples.write_lerobot_dataset(root / "pick_videos", num_episodes=2, num_frames=5, dtype="video", cameras=("top",))
    return root


def test_lerobot_datasets_are_found_per_episode_and_camera(datasets: Path) -> None:
    sources = discover_sources([datasets])
    found = sorted((s.path.name, s.episode, s.camera, s.key, s.offset, s.num_frames) for s in sources)
    assert found == [
        ("pick_images", "0", "front", "observation.images.front", 0, 4),
        ("pick_images", "0", "wrist", "observation.images.wrist", 0, 4),
        ("pick_images", "1", "front", "observation.images.front", 4, 4),
        ("pick_images", "1", "wrist", "observation.images.wrist", 4, 4),
        ("pick_videos", "0", "top", "observation.images.top", 0, 5),
        ("pick_videos", "1", "top", "observation.images.top", 5, 5),
    ]
    by_key = discover_sources([datasets / "pick_images"], cameras=["observation.images.wrist"])
    assert {s.camera for s in by_key} == {"wrist"}
    with pytest.raises(NoFramesError, match="matches none of the cameras found: front, wrist"):
        discover_sources([datasets / "pick_images"], cameras=["top"])


def test_lerobot_frames_match_the_recording(datasets: Path) -> None:
    dataset = FrameDataset(discover_sources([datasets]), frame_size=48)
    for index in range(len(dataset)):
        source, frame = dataset.locate(index)
        sample = dataset[index]
        expected = square_resize(examples.pattern_frame(frame, int(source.episode)), 48).transpose(2, 0, 1)
        error = np.abs(sample["frame"].numpy().astype(int) - expected.astype(int)).max()
        tolerance = 0 if source.path.name == "pick_images" else 12  # images are PNG; videos are lossy AV1
        assert error <= tolerance, (source.name, frame, error)
    assert dataset.skipped_summary() == "skipped: nothing"


def test_lerobot_video_dataset_in_dataloader_workers(datasets: Path) -> None:
    dataset = FrameDataset(discover_sources([datasets / "pick_videos"]), frame_size=32, stride=2)
    loader = DataLoader(dataset, batch_size=3, num_workers=2, collate_fn=collate_frames)
    batches = list(loader)
    assert sum(len(b["frame"]) for b in batches) == len(dataset) == 6
    reds = torch.cat([b["frame"][:, 0].float().mean(dim=(1, 2)) for b in batches])
    assert [round(float(r) / 16) for r in reds] == [0, 2, 4, 0, 2, 4]
