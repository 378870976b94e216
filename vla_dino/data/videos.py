"""Video files (mp4, avi, mkv, webm): one source per file, decoded with PyAV.

OpenCV is the fallback only for files PyAV cannot open or index (the chosen backend is stored in
`FrameSource.key`). Random access: PyAV seeks to the keyframe before the wanted frame and decodes
forward; reads that move forward by a little reuse the running decoder instead of seeking, so
strided or sequential reading does not re-decode each group of pictures.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path
from typing import Iterator

import av
import cv2
import numpy as np

from vla_dino.data.base import FrameReadError, FrameSource

logger = logging.getLogger(__name__)

# Forward jumps up to this many frames decode through instead of seeking (a typical GOP is ≤ 250).
_MAX_DECODE_AHEAD = 64
_MAX_OPEN_FILES = 8


def video_source(path: Path, episode: str, camera: str) -> FrameSource:
    """Probe one file: frame count and backend, or the reason it cannot be read."""
    pyav_error = None
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise FrameReadError("no video stream")
            stream = container.streams.video[0]
            num_frames = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
        if num_frames > 0:
            return FrameSource("video", path, episode, camera, num_frames, key="pyav")
        pyav_error = "no frames"
    except (av.error.FFmpegError, FrameReadError, OSError) as error:
        pyav_error = f"{type(error).__name__}: {error}"
    capture = cv2.VideoCapture(str(path))
    try:
        num_frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if capture.isOpened() else 0
        if num_frames > 0 and capture.read()[0]:
            logger.warning("%s: PyAV cannot read it (%s); decoding with OpenCV", path, pyav_error)
            return FrameSource("video", path, episode, camera, num_frames, key="opencv")
    finally:
        capture.release()
    return FrameSource("video", path, episode, camera, 0, key="pyav", error=f"unreadable video ({pyav_error}; OpenCV neither)")


class _PyAVVideo:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.container = av.open(str(path))
        self.stream = self.container.streams.video[0]
        # One decoding thread: DataLoader workers are the parallelism, and FFmpeg's thread pools
        # do not survive fork (freeing an inherited one deadlocks the child).
        self.stream.thread_type = "NONE"
        self.stream.codec_context.thread_count = 1
        # Frame i is the i-th presentation timestamp; demuxing reads packets without decoding.
        timestamps = [packet.pts for packet in self.container.demux(self.stream) if packet.size]
        if any(pts is None for pts in timestamps):
            raise FrameReadError(f"{path}: packets without timestamps; cannot index frames")
        self.timestamps = sorted(timestamps)
        self.index_of = {pts: i for i, pts in enumerate(self.timestamps)}
        self.frames: Iterator[av.VideoFrame] | None = None
        self.last_index = -1

    def read(self, index: int, min_side: int | None) -> np.ndarray:
        if not 0 <= index < len(self.timestamps):
            raise FrameReadError(f"{self.path}: frame {index} of {len(self.timestamps)} decodable frames")
        if self.frames is None or not self.last_index < index <= self.last_index + _MAX_DECODE_AHEAD:
            self.container.seek(self.timestamps[index], stream=self.stream, backward=True, any_frame=False)
            self.frames = self.container.decode(self.stream)
        try:
            return self._decode_until(index, min_side)
        except Exception:
            self.frames = None  # a failed decoder is not resumed
            raise

    def _decode_until(self, index: int, min_side: int | None) -> np.ndarray:
        assert self.frames is not None
        for frame in self.frames:
            position = self.index_of.get(frame.pts, -1)
            if position < index:
                continue
            self.last_index = position
            if position > index:
                break
            return _frame_to_rgb(frame, min_side)
        self.frames = None
        raise FrameReadError(f"{self.path}: frame {index} could not be decoded")

    def close(self) -> None:
        self.container.close()


def _frame_to_rgb(frame: av.VideoFrame, min_side: int | None) -> np.ndarray:
    """Decoded frame → RGB uint8; large frames are shrunk in swscale so the shorter side is ≥ min_side."""
    shorter = min(frame.width, frame.height)
    if min_side is not None and shorter > 2 * min_side:
        scale = min_side / shorter
        width, height = max(min_side, round(frame.width * scale)), max(min_side, round(frame.height * scale))
        return frame.reformat(width=width, height=height, format="rgb24", interpolation="AREA").to_ndarray()
    return frame.to_ndarray(format="rgb24")


class _OpenCVVideo:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.capture = cv2.VideoCapture(str(path))
        if not self.capture.isOpened():
            raise FrameReadError(f"{path}: OpenCV cannot open it")
        self.next_index = 0

    def read(self, index: int, min_side: int | None) -> np.ndarray:
        if index != self.next_index:
            self.capture.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, bgr = self.capture.read()
        self.next_index = index + 1
        if not ok:
            self.next_index = -1
            raise FrameReadError(f"{self.path}: OpenCV could not decode frame {index}")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        self.capture.release()


class VideoReader:
    """Keeps up to 8 files open in the process that reads (opened on first use, never pickled)."""

    def __init__(self) -> None:
        self.open_files: OrderedDict[Path, _PyAVVideo | _OpenCVVideo] = OrderedDict()

    def read(self, source: FrameSource, index: int, min_side: int | None = None) -> np.ndarray:
        video = self.open_files.pop(source.path, None)
        if video is None:
            video = _OpenCVVideo(source.path) if source.key == "opencv" else _PyAVVideo(source.path)
        self.open_files[source.path] = video  # most recently used last
        while len(self.open_files) > _MAX_OPEN_FILES:
            self.open_files.popitem(last=False)[1].close()
        return video.read(index, min_side)

    def close(self) -> None:
        for video in self.open_files.values():
            video.close()
        self.open_files.clear()
