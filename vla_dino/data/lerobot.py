"""Local LeRobot datasets (a folder with `meta/info.json`), read through lerobot itself.

Camera keys are the features of dtype `image` or `video`; one source per episode and camera.
Metadata, episode boundaries and image columns come from `LeRobotDataset(repo_id, root)`;
video frames are decoded with lerobot's `decode_video_frames` on the PyAV backend (torchcodec
does not load on these machines), one camera at a time so other cameras are not decoded for nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from vla_dino.data.base import FrameReadError, FrameSource, to_rgb_uint8


CAMERA_DTYPES = ("image", "video")


def is_lerobot_dataset(folder: Path) -> bool:
    return (folder / "meta" / "info.json").is_file()


def _open(root: Path) -> Any:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset  # heavy import: only when a dataset is found

    # repo_id only names the dataset; with a local root lerobot reads from disk and never downloads.
    return LeRobotDataset(repo_id=f"local/{root.name}", root=root, video_backend="pyav", return_uint8=True)


def camera_keys(root: Path) -> list[str]:
    """Image/video feature keys from `meta/info.json` (no parquet reading); depth maps are left out."""
    features = json.loads((root / "meta" / "info.json").read_text())["features"]
    return [
        key
        for key, spec in features.items()
        if spec.get("dtype") in CAMERA_DTYPES and not (spec.get("info") or {}).get("is_depth_map", False)
    ]


def lerobot_sources(root: Path, keys: list[str]) -> list[FrameSource]:
    """One source per (episode, camera key); an error source if lerobot cannot load the dataset."""
    try:
        dataset = _open(root)
        episodes = dataset.meta.episodes
        bounds = [(int(ep["episode_index"]), int(ep["dataset_from_index"]), int(ep["dataset_to_index"])) for ep in episodes]
    except Exception as error:  # lerobot raises many kinds (parquet, json, version checks)
        return [FrameSource("lerobot", root, "", "", 0, error=f"LeRobot dataset cannot be loaded ({type(error).__name__}: {error})")]
    return [
        FrameSource("lerobot", root, str(episode), key.rsplit(".", 1)[-1], stop - start, key=key, offset=start)
        for key in keys
        for episode, start, stop in bounds
    ]


class LeRobotReader:
    """Opens each dataset once per reading process (never pickled)."""

    def __init__(self) -> None:
        self.datasets: dict[Path, Any] = {}
        self.columns: dict[tuple[Path, str], Any] = {}

    def _dataset(self, root: Path) -> Any:
        if root not in self.datasets:
            self.datasets[root] = _open(root)
        return self.datasets[root]

    def _column(self, root: Path, key: str) -> Any:
        """One column of the parquet data without lerobot's float transform (PIL images stay PIL)."""
        if (root, key) not in self.columns:
            self.columns[(root, key)] = self._dataset(root).hf_dataset.with_format(None).select_columns([key])
        return self.columns[(root, key)]

    def read(self, source: FrameSource, index: int, min_side: int | None = None) -> np.ndarray:
        root, key, row = source.path, source.key, source.offset + index
        where = f"{root}:{key} episode {source.episode} frame {index}"
        dataset = self._dataset(root)
        if key in dataset.meta.video_keys:
            return self._read_video(dataset, source, row, where)
        image = self._column(root, key)[row][key]
        if image is None:
            raise FrameReadError(f"{where}: no image stored")
        return to_rgb_uint8(np.asarray(image), where=where)

    def _read_video(self, dataset: Any, source: FrameSource, row: int, where: str) -> np.ndarray:
        from lerobot.datasets.video_utils import decode_video_frames

        episode = int(source.episode)
        timestamp = float(self._column(source.path, "timestamp")[row]["timestamp"])
        start = float(dataset.meta.episodes[episode][f"videos/{source.key}/from_timestamp"])
        video = source.path / dataset.meta.get_video_file_path(episode, source.key)
        frames = decode_video_frames(video, [start + timestamp], dataset.tolerance_s, "pyav", return_uint8=True)
        if frames.ndim != 4 or frames.shape[0] != 1:
            raise FrameReadError(f"{where}: decoder returned shape {tuple(frames.shape)}")
        return to_rgb_uint8(frames[0].permute(1, 2, 0).numpy(), where=where)

    def close(self) -> None:
        self.datasets.clear()
        self.columns.clear()
