"""Image files (jpg, jpeg, png, webp, bmp): one source per folder of frames, read with Pillow.

Pillow raises on truncated files (OpenCV would return a half-grey frame), so corrupt frames are
skipped rather than trained on. JPEGs are decoded at reduced scale when they are much larger than
the target (`Image.draft`), which is exact DCT scaling, not an approximation of the resize.
`read_jpeg_bytes` hands a plain JPEG over undecoded, for batched decoding in the main process.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vla_dino.data.base import FrameSource, to_rgb_uint8


def natural_key(path: Path) -> list[object]:
    """frame_2 before frame_10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def image_source(folder: Path, files: list[Path], episode: str, camera: str) -> FrameSource:
    ordered = tuple(sorted(files, key=natural_key))
    return FrameSource(kind="images", path=folder, episode=episode, camera=camera, num_frames=len(ordered), files=ordered)


def read_image(path: Path, min_side: int | None = None) -> np.ndarray:
    """One image file → (H, W, 3) uint8 RGB; `min_side` lets JPEG decoding downscale to ≥ it."""
    with Image.open(path) as image:
        if min_side is not None and image.format == "JPEG":
            image.draft("RGB", (min_side, min_side))  # keeps both sides ≥ min_side
        image.load()  # raises OSError on truncated data
        if image.mode == "P":  # palette: expand to its colours (with alpha if it has transparency)
            image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        elif image.mode == "CMYK":
            image = image.convert("RGB")
        array = np.asarray(image)
    if array.dtype == np.int32 and image.mode == "I":  # 16-bit PNGs can open as 32-bit "I"
        if array.min() < 0 or array.max() > 65535:
            raise ValueError(f"{path}: 32-bit integer pixels outside 0..65535; expected an 8- or 16-bit image")
        array = array.astype(np.uint16)
    return to_rgb_uint8(array, where=str(path))


def read_jpeg_bytes(path: Path, min_side: int = 1) -> torch.Tensor | None:
    """A JPEG file's bytes as a 1-D uint8 tensor, for `torchvision.io.decode_jpeg` later; None when the file is
    better decoded by `read_image` (which also names what is wrong with it): not a JPEG, not 8-bit RGB or
    grayscale (CMYK, …), without its end-of-image marker (truncated: Pillow raises where a decoder may fill in
    grey), or with a shorter side below `min_side`."""
    data = path.read_bytes()
    if not (data.startswith(b"\xff\xd8") and data.endswith(b"\xff\xd9")):
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:  # parses the header only
            plain = image.format == "JPEG" and image.mode in ("RGB", "L") and min(image.size) >= min_side
    except OSError:  # not an image Pillow knows (UnidentifiedImageError is an OSError)
        return None
    return torch.frombuffer(bytearray(data), dtype=torch.uint8) if plain else None


class ImageReader:
    """Stateless: every read opens the file, so nothing is held across DataLoader workers."""

    def read(self, source: FrameSource, index: int, min_side: int | None = None) -> np.ndarray:
        return read_image(source.files[index], min_side)

    def close(self) -> None:
        pass
