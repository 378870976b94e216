"""What every source kind shares: the `FrameSource` record, pixel conversion to RGB uint8,
and the square resize used by the dataset.

Pixel conversion rules (the same for every source kind, applied by `to_rgb_uint8`):
- grayscale (H, W) or (H, W, 1) → the channel is replicated to RGB;
- RGBA / grayscale+alpha → the alpha channel is dropped (no compositing: robot frames are opaque,
  an alpha channel is an export artefact);
- 16-bit integers → scaled to 8 bits by keeping the high byte (`value >> 8`), the mapping Pillow
  uses for 48-bit RGB PNGs, so 0 → 0 and 65535 → 255;
- floats → accepted only in [0, 1] (scaled by 255); anything else is rejected with the range found.
Other dtypes and channel counts are rejected with a message naming the shape and dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".webm")
HDF5_SUFFIXES = (".hdf5", ".h5")
SUPPORTED_INPUTS = (
    f"image folders ({', '.join(s.lstrip('.') for s in IMAGE_SUFFIXES)}; nested episode/camera folders), "
    f"video files ({', '.join(s.lstrip('.') for s in VIDEO_SUFFIXES)}), "
    "local LeRobot datasets (a folder with meta/info.json), "
    f"HDF5 episode files ({', '.join(s.lstrip('.') for s in HDF5_SUFFIXES)}) in the robomimic "
    "(data/demo_N/obs/<camera>_image) or ALOHA (observations/images/<camera>) layout"
)


@dataclass(frozen=True)
class FrameSource:
    """One episode of one camera.

    `key` says where the frames live inside `path` (HDF5 dataset path, LeRobot feature key,
    video backend); `files` lists the frame files of an image folder in order; `offset` is the
    first row of the episode in a LeRobot dataset. A source whose file could not be opened at
    discovery has `num_frames == 0` and the reason in `error`; the dataset reports it as skipped.
    """

    kind: str  # "images" | "video" | "lerobot" | "hdf5"
    path: Path
    episode: str
    camera: str
    num_frames: int
    key: str = ""
    files: tuple[Path, ...] = ()
    offset: int = 0
    error: str | None = None

    @property
    def name(self) -> str:
        """A readable id: `path[:key]`, then episode and camera."""
        where = f"{self.path}:{self.key}" if self.key and self.kind != "video" else str(self.path)
        return f"{where} (episode {self.episode}, camera {self.camera})"


class FrameReadError(RuntimeError):
    """A frame that exists but cannot be decoded or converted (the sample is skipped)."""


def to_rgb_uint8(array: np.ndarray, where: str = "image") -> np.ndarray:
    """Any supported image array → (H, W, 3) uint8 RGB, by the rules in the module docstring."""
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[-1] not in (1, 2, 3, 4):
        raise FrameReadError(f"{where}: shape {tuple(array.shape)}; expected (H, W), (H, W, 1|2|3|4) channels last")
    channels = array.shape[-1]
    if channels in (2, 4):  # grayscale+alpha / RGBA: drop alpha
        array = array[:, :, : channels - 1]
    array = _to_uint8(array, where)
    if array.shape[-1] == 1:  # grayscale: replicate
        array = np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array)


def _to_uint8(array: np.ndarray, where: str) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return (array >> 8).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 1.0:
            raise FrameReadError(f"{where}: float pixels in [{low:.3g}, {high:.3g}]; expected [0, 1]")
        return np.round(array * 255.0).astype(np.uint8)
    raise FrameReadError(f"{where}: dtype {array.dtype}; expected uint8, uint16 or float in [0, 1]")


def square_crop(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """(top, left, side, factor) for `square_resize`: the centre square of side min(H, W), trimmed by
    < factor pixels so that the integer shrink factor (≥ 2 only when side ≥ 2·size) divides it."""
    side = min(height, width)
    factor = side // size if side >= 2 * size else 1
    side -= side % factor
    return (height - side) // 2, (width - side) // 2, side, factor


def square_resize(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 → (size, size, 3): centre square of side min(H, W), then resized.

    Same result as resizing the shorter side to `size` and centre-cropping, with less work.
    Shrinking: box-average by the largest integer factor (OpenCV's fast exact INTER_AREA path;
    the square is trimmed by < factor pixels to divide evenly), then bilinear for the remaining
    < 2× (the reducing-gap scheme Pillow uses; no aliasing, ~7× faster than a fractional
    INTER_AREA). Enlarging: bicubic.
    """
    top, left, side, factor = square_crop(*image.shape[:2], size)
    square = image[top : top + side, left : left + side]
    if factor > 1:
        square = cv2.resize(square, (side // factor, side // factor), interpolation=cv2.INTER_AREA)
        side //= factor
    if side == size:
        return np.array(square)  # a writable copy (decoders may hand out read-only buffers)
    interpolation = cv2.INTER_LINEAR if side > size else cv2.INTER_CUBIC
    return cv2.resize(square, (size, size), interpolation=interpolation)


def square_resize_tensor(images: torch.Tensor, size: int) -> torch.Tensor:
    """`square_resize` for a uint8 (N, 3, H, W) tensor on any device (frames decoded on the GPU stay there).

    The same steps with torch ops (box average = `avg_pool2d` by the integer factor, then bilinear, or
    bicubic when enlarging), in float with one rounding at the end: within 1 grey level of OpenCV's
    fixed-point result.
    """
    top, left, side, factor = square_crop(*images.shape[-2:], size)
    square = images[..., top : top + side, left : left + side].float()
    if factor > 1:
        square = F.avg_pool2d(square, factor)
    if square.shape[-1] != size:
        mode = "bilinear" if square.shape[-1] > size else "bicubic"
        square = F.interpolate(square, size=(size, size), mode=mode, align_corners=False)
    return square.round_().clamp_(0, 255).to(torch.uint8)
