"""HDF5 episode files (.hdf5, .h5) in the two common robot layouts, read with h5py.

- robomimic: `data/demo_N/obs/<camera>_image`, (T, H, W, 3) uint8; one source per demo and camera,
  camera name without the `_image` suffix (`agentview_image` → `agentview`).
- ALOHA (act / lerobot's converters): one episode per file, `observations/images/<camera>`,
  (T, H, W, 3) uint8, or (T, L) uint8 when recorded with `compress=True` (each row a padded
  JPEG/PNG buffer; decoded with OpenCV, channel order as it was encoded: ALOHA encodes RGB arrays,
  so they come back RGB).
(T, H, W) and (T, H, W, 1) grayscale cameras follow the usual conversion rules (`base.to_rgb_uint8`).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import cv2
import h5py
import numpy as np

from vla_dino.data.base import FrameReadError, FrameSource, to_rgb_uint8

_MAX_OPEN_FILES = 8
LAYOUTS = "robomimic data/demo_N/obs/<camera>_image or ALOHA observations/images/<camera>"


def hdf5_sources(path: Path, episode: str) -> list[FrameSource]:
    """Every (episode, camera) image dataset in one file; a single error source if there is none."""
    try:
        with h5py.File(path, "r") as handle:
            found = [
                FrameSource("hdf5", path, name, camera, int(handle[key].shape[0]), key=key)
                for name, camera, key in _camera_datasets(handle, episode)
            ]
    except (OSError, KeyError, ValueError) as error:
        return [FrameSource("hdf5", path, episode, "", 0, error=f"unreadable HDF5 file ({type(error).__name__}: {error})")]
    if not found:
        return [FrameSource("hdf5", path, episode, "", 0, error=f"no camera images in the {LAYOUTS} layout")]
    return found


def _camera_datasets(handle: h5py.File, episode: str) -> list[tuple[str, str, str]]:
    """(episode, camera, dataset path) for each image dataset in either layout."""
    entries = []
    data = handle.get("data")
    if isinstance(data, h5py.Group):  # robomimic
        for demo in sorted(data, key=_demo_number):
            obs = data[demo].get("obs")
            if not isinstance(obs, h5py.Group):
                continue
            for key in sorted(obs):
                if key.endswith("_image") and _is_image_dataset(obs[key]):
                    entries.append((f"{episode}/{demo}", key.removesuffix("_image"), f"data/{demo}/obs/{key}"))
    images = handle.get("observations/images")
    if isinstance(images, h5py.Group):  # ALOHA
        for camera in sorted(images):
            if _is_image_dataset(images[camera]):
                entries.append((episode, camera, f"observations/images/{camera}"))
    return entries


def _demo_number(name: str) -> tuple[int, str]:
    suffix = name.rsplit("_", 1)[-1]
    return (int(suffix), name) if suffix.isdigit() else (-1, name)


def _is_image_dataset(node: object) -> bool:
    if not isinstance(node, h5py.Dataset) or node.shape[0] == 0:
        return False
    return node.ndim in (3, 4) or (node.ndim == 2 and node.dtype == np.uint8)  # 2-D: compressed rows


class HDF5Reader:
    """Keeps up to 8 files open in the process that reads (opened on first use, never pickled)."""

    def __init__(self) -> None:
        self.open_files: OrderedDict[Path, h5py.File] = OrderedDict()

    def read(self, source: FrameSource, index: int, min_side: int | None = None) -> np.ndarray:
        handle = self.open_files.pop(source.path, None) or h5py.File(source.path, "r")
        self.open_files[source.path] = handle
        while len(self.open_files) > _MAX_OPEN_FILES:
            self.open_files.popitem(last=False)[1].close()
        dataset = handle[source.key]
        array = dataset[index]
        where = f"{source.path}:{source.key}[{index}]"
        if dataset.ndim == 2:  # compressed row: an encoded image padded with zeros
            array = cv2.imdecode(np.asarray(array, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
            if array is None:
                raise FrameReadError(f"{where}: compressed image could not be decoded")
        return to_rgb_uint8(np.asarray(array), where=where)

    def close(self) -> None:
        for handle in self.open_files.values():
            handle.close()
        self.open_files.clear()
