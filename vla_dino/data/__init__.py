"""Robot camera frames in: image folders, videos, LeRobot datasets and HDF5 episode files.

`discover_sources(paths, cameras)` finds every (episode, camera) source; `FrameDataset` serves
square uint8 frames (with optional stride and temporal neighbours) to a DataLoader with
`collate_frames`. Pixel conversion rules (grayscale, RGBA, 16-bit) are in `vla_dino.data.base`.
`DevicePrefetcher` copies the next batch to the GPU while a step runs; `FrameDataset(defer_jpeg=True)` with
`JpegBatchDecoder` decodes JPEG frames batched in the main process, on the GPU where there is one.
`FrameCache` decodes every source once, in order, to disk, and `FrameDataset(frame_cache=...)` reads from it
(random access into long-GOP videos otherwise decodes a group of pictures per frame).
"""

from vla_dino.data.base import SUPPORTED_INPUTS, FrameReadError, FrameSource, square_resize, square_resize_tensor, to_rgb_uint8
from vla_dino.data.dataset import FrameDataset, collate_frames, load_frame_tensor
from vla_dino.data.decode import JpegBatchDecoder
from vla_dino.data.discovery import NoFramesError, deduplicate_sources, discover_sources
from vla_dino.data.frame_cache import CacheBuild, FrameCache
from vla_dino.data.prefetch import DevicePrefetcher
from vla_dino.data.scan import ScanResult, scan_sources

__all__ = [
    "CacheBuild",
    "DevicePrefetcher",
    "FrameCache",
    "FrameDataset",
    "FrameReadError",
    "FrameSource",
    "JpegBatchDecoder",
    "NoFramesError",
    "SUPPORTED_INPUTS",
    "ScanResult",
    "collate_frames",
    "deduplicate_sources",
    "discover_sources",
    "load_frame_tensor",
    "scan_sources",
    "square_resize",
    "square_resize_tensor",
    "to_rgb_uint8",
]
