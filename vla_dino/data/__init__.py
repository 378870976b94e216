"""Robot camera frames in: image folders, videos, LeRobot datasets and HDF5 episode files.

`discover_sources(paths, cameras)` finds every (episode, camera) source; `FrameDataset` serves
square uint8 frames (with optional stride and temporal neighbours) to a DataLoader with
`collate_frames`. Pixel conversion rules (grayscale, RGBA, 16-bit) are in `vla_dino.data.base`.
"""

from vla_dino.data.base import SUPPORTED_INPUTS, FrameReadError, FrameSource, square_resize, to_rgb_uint8
from vla_dino.data.dataset import FrameDataset, collate_frames, load_frame_tensor
from vla_dino.data.discovery import NoFramesError, deduplicate_sources, discover_sources
from vla_dino.data.scan import ScanResult, scan_sources

__all__ = [
    "FrameDataset",
    "FrameReadError",
    "FrameSource",
    "NoFramesError",
    "SUPPORTED_INPUTS",
    "ScanResult",
    "collate_frames",
    "deduplicate_sources",
    "discover_sources",
    "load_frame_tensor",
    "scan_sources",
    "square_resize",
    "to_rgb_uint8",
]
