"""OpenCV camera loop: device indices, video files and stream URLs as RGB uint8 frames.

Each :class:`CameraStream` reads in a background thread and keeps only the newest frame,
so a slow consumer always gets the current view instead of a stale buffered one. Files are
played back at their own frame rate (or ``fps``) and rewound at the end when ``loop`` is
set; live sources are read as fast as they deliver. Frames are converted BGR → RGB and
resized (``cv2.INTER_AREA``) to the size the policy expects.

For robots with a LeRobot robot config, ``lerobot-rollout --policy.path=...`` reads the
cameras itself (see docs/runtime.md); this module is for the runtime and the policy server.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from vla_dino.runtime.spec import PolicySpec

logger = logging.getLogger(__name__)

MAX_CONSECUTIVE_FAILURES = 10


def parse_source(source: str | int | Path) -> str | int:
    """``0`` / ``"0"`` → device index; an existing path or a URL (``rtsp://``, ``http://``) → string."""
    if isinstance(source, int):
        return source
    text = str(source)
    if text.isdigit():
        return int(text)
    if "://" not in text and not Path(text).exists():
        raise FileNotFoundError(f"camera source {text!r}: no such file (expected a device index, a video file or a stream URL)")
    return text


@dataclass(frozen=True)
class Frame:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    timestamp: float  # time.perf_counter() when it was read
    index: int  # frames read so far from this source (0-based)


class CameraStream:
    """Newest-frame reader of one OpenCV source in a background thread."""

    def __init__(self, source: str | int | Path, size: tuple[int, int] | None = None, fps: float | None = None, loop: bool = True) -> None:
        self.source = parse_source(source)
        self.size = size  # (height, width) of the frames handed out; None keeps the native size
        self.fps = fps
        self.loop = loop
        self.is_file = isinstance(self.source, str) and "://" not in self.source
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._error: BaseException | None = None
        self._ended = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._capture: cv2.VideoCapture | None = None

    def start(self) -> CameraStream:
        capture = cv2.VideoCapture(self.source)
        if not capture.isOpened():
            capture.release()
            raise ConnectionError(f"camera source {self.source!r}: OpenCV could not open it")
        if not self.is_file and self.fps:
            capture.set(cv2.CAP_PROP_FPS, float(self.fps))
        self._capture = capture
        self._thread = threading.Thread(target=self._read_loop, name=f"camera-{self.source}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self._capture is not None:
            self._capture.release()
            self._capture = None

    def __enter__(self) -> CameraStream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _read_loop(self) -> None:
        period = 0.0
        if self.is_file:
            period = 1.0 / (self.fps or self._capture.get(cv2.CAP_PROP_FPS) or 30.0)
        failures, index, next_time = 0, 0, time.perf_counter()
        while not self._stop.is_set():
            ok, bgr = self._capture.read()
            if not ok:
                if self.is_file and self.loop and index > 0:
                    self._capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
                    continue
                if self.is_file:
                    with self._cond:
                        self._ended = True
                        self._cond.notify_all()
                    return
                failures += 1
                if failures >= MAX_CONSECUTIVE_FAILURES:
                    with self._cond:
                        self._error = ConnectionError(f"camera source {self.source!r}: {failures} consecutive read failures")
                        self._cond.notify_all()
                    return
                continue
            failures = 0
            frame = Frame(self._convert(bgr), time.perf_counter(), index)
            index += 1
            with self._cond:
                self._frame = frame
                self._cond.notify_all()
            if period:  # play files back in real time
                next_time += period
                delay = next_time - time.perf_counter()
                if delay > 0:
                    self._stop.wait(delay)
                else:
                    next_time = time.perf_counter()

    def _convert(self, bgr: np.ndarray) -> np.ndarray:
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        if self.size is not None and rgb.shape[:2] != tuple(self.size):
            height, width = self.size
            rgb = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)
        return rgb

    def read(self, newer_than: int = -1, timeout_s: float = 2.0) -> Frame:
        """The newest frame with ``index > newer_than`` (waits up to ``timeout_s`` for one)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._frame is None or self._frame.index <= newer_than:
                if self._error is not None:
                    raise self._error
                if self._ended:
                    raise EOFError(f"camera source {self.source!r}: end of file (loop=False)")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"camera source {self.source!r}: no new frame within {timeout_s} s")
                self._cond.wait(remaining)
            return self._frame


class CameraRig:
    """Named cameras whose names match the policy's image inputs (``observation.images.<name>``)."""

    def __init__(self, streams: Mapping[str, CameraStream]) -> None:
        self.streams = dict(streams)
        self._last_index = {name: -1 for name in self.streams}

    @classmethod
    def for_policy(cls, spec: PolicySpec, sources: Mapping[str, str | int | Path], fps: float | None = None, loop: bool = True) -> CameraRig:
        """One stream per policy camera; ``sources`` keys may be full input keys or the short camera name."""
        by_key = {name if name.startswith("observation.") else f"observation.images.{name}": src for name, src in sources.items()}
        expected = {s.name: s.shape[:2] for s in spec.inputs if s.is_image}
        if set(by_key) != set(expected):
            raise ValueError(f"camera sources {sorted(by_key)} do not match the policy's cameras {sorted(expected)}")
        return cls({key: CameraStream(src, size=expected[key], fps=fps, loop=loop) for key, src in by_key.items()})

    def start(self) -> CameraRig:
        started = []
        try:
            for stream in self.streams.values():
                started.append(stream.start())
        except BaseException:
            for stream in started:
                stream.stop()
            raise
        return self

    def stop(self) -> None:
        for stream in self.streams.values():
            stream.stop()

    def __enter__(self) -> CameraRig:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def read(self, fresh: bool = False, timeout_s: float = 2.0) -> dict[str, np.ndarray]:
        """Newest image of every camera; ``fresh=True`` waits for frames not returned before."""
        images = {}
        for name, stream in self.streams.items():
            frame = stream.read(self._last_index[name] if fresh else -1, timeout_s)
            self._last_index[name] = frame.index
            images[name] = frame.image
        return images
