"""OpenCV camera loop: device indices, video files and stream URLs as fresh RGB uint8 frames.

Each :class:`CameraStream` reads in a background thread and keeps only the newest frame, so a
slow consumer always gets the current view instead of a stale buffered one. Frames are
converted BGR → RGB and resized (``cv2.INTER_AREA``) to the size the policy expects. Files are
played back at their own frame rate (or ``fps``) and rewound at the end when ``loop`` is set;
live sources (device index, stream URL) are read as fast as they deliver.

Freshness is checked on every read, not only while waiting: each :class:`Frame` knows its age,
and :meth:`CameraStream.read` returns a frame only if it is younger than ``max_age_s`` (by
default three frame periods of the camera's rate, at least 50 ms). A camera that froze (its
driver blocks, the cable is pulled) raises :class:`StaleFrameError`; one that died (repeated read
failures with reconnection off or exhausted) raises :class:`CameraDisconnectedError`; a file that
ended raises ``EOFError``. A live source whose reads fail is reopened with exponential back-off
(``reconnect_backoff_s``), and the counters in :class:`CameraStats` (frames, drops, stale reads,
read failures, reconnects) say what happened.

For robots with a LeRobot robot config, ``lerobot-rollout --policy.path=...`` reads the
cameras itself (see docs/runtime.md); this module is for the runtime and the policy server.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from vla_dino.runtime.spec import PolicySpec

logger = logging.getLogger(__name__)

MAX_CONSECUTIVE_FAILURES = 10  # failed reads in a row before a live source is reopened (a file: declared dead)
FAILURE_PAUSE_S = 0.01  # between failed reads: a dead device returns at once, and spinning would eat a core
STALE_PERIODS = 3.0  # default max_age_s = STALE_PERIODS / fps ...
MIN_MAX_AGE_S = 0.05  # ... but never below this (scheduler jitter on a loaded machine)
DEFAULT_FPS = 30.0  # when neither ``fps`` nor the source reports a rate


class StaleFrameError(TimeoutError):
    """No frame younger than ``max_age_s`` within the read's timeout (a frozen or stalled camera)."""


class CameraDisconnectedError(ConnectionError):
    """The source failed and could not be reopened (or reconnection is off)."""


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


def default_max_age(fps: float) -> float:
    """Oldest acceptable frame for a camera at ``fps``: ``STALE_PERIODS`` periods, at least ``MIN_MAX_AGE_S``."""
    return max(STALE_PERIODS / fps, MIN_MAX_AGE_S)


@dataclass(frozen=True)
class Frame:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    timestamp: float  # time.perf_counter() when it was read from the source
    index: int  # frames read so far from this source (0-based; keeps counting across rewinds and reconnects)

    @property
    def age_s(self) -> float:
        return time.perf_counter() - self.timestamp


@dataclass
class CameraStats:
    frames: int = 0  # frames read from the source
    drops: int = 0  # frames replaced by a newer one before any read() returned them
    stale: int = 0  # read() calls that raised StaleFrameError
    read_failures: int = 0  # failed capture reads
    reconnects: int = 0  # successful reopenings of a live source
    reconnect_attempts: int = 0


class CameraStream:
    """Newest-frame reader of one OpenCV source in a background thread, with a freshness check on every read."""

    def __init__(
        self,
        source: str | int | Path,
        size: tuple[int, int] | None = None,
        fps: float | None = None,
        loop: bool = True,
        max_age_s: float | None = None,
        reconnect: bool = True,
        max_reconnects: int | None = None,
        reconnect_backoff_s: tuple[float, float] = (0.1, 2.0),
        start_timeout_s: float = 5.0,
        capture_factory: Callable[[str | int], Any] = cv2.VideoCapture,
    ) -> None:
        """``max_age_s=None``: from the rate (``fps``, else what the source reports, else 30).
        ``max_reconnects=None`` retries a live source until :meth:`stop`; back-off doubles from
        ``reconnect_backoff_s[0]`` up to ``[1]``. ``capture_factory`` opens a source (``cv2.VideoCapture``;
        anything with ``isOpened/read/set/get/release``)."""
        self.source = parse_source(source)
        self.size = size  # (height, width) of the frames handed out; None keeps the native size
        if fps is not None and not (math.isfinite(fps) and fps > 0):
            raise ValueError(f"camera source {self.source!r}: fps must be > 0, got {fps}")
        if max_age_s is not None and not (max_age_s > 0):
            raise ValueError(f"camera source {self.source!r}: max_age_s must be > 0, got {max_age_s}")
        low, high = reconnect_backoff_s
        if not 0 < low <= high:
            raise ValueError(f"camera source {self.source!r}: reconnect_backoff_s must be 0 < min <= max, got {reconnect_backoff_s}")
        if max_reconnects is not None and max_reconnects < 0:
            raise ValueError(f"camera source {self.source!r}: max_reconnects must be >= 0 or None, got {max_reconnects}")
        self.fps = fps
        self.loop = loop
        self._max_age_s = max_age_s
        self.reconnect = reconnect
        self.max_reconnects = max_reconnects
        self.reconnect_backoff_s = (float(low), float(high))
        self.start_timeout_s = start_timeout_s
        self.capture_factory = capture_factory
        self.is_file = isinstance(self.source, str) and "://" not in self.source
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._frame_returned = False
        self._error: BaseException | None = None
        self._ended = False
        self._stats = CameraStats()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._capture: Any = None
        self._source_fps: float | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def max_age_s(self) -> float:
        if self._max_age_s is not None:
            return self._max_age_s
        return default_max_age(self.fps or self._source_fps or DEFAULT_FPS)

    @property
    def stats(self) -> CameraStats:
        with self._cond:
            return replace(self._stats)

    def start(self) -> CameraStream:
        """Open the source, start reading, and wait up to ``start_timeout_s`` for the first frame."""
        capture = self._open()
        if capture is None:
            raise ConnectionError(f"camera source {self.source!r}: OpenCV could not open it")
        self._capture = capture
        self._stop.clear()
        self._thread = threading.Thread(target=self._read_loop, name=f"camera-{self.source}", daemon=True)
        self._thread.start()
        with self._cond:
            self._cond.wait_for(lambda: self._frame is not None or self._error is not None or self._ended, self.start_timeout_s)
            error: BaseException | None = self._error
            if error is None and self._frame is None:
                error = (EOFError(f"camera source {self.source!r}: ended before its first frame") if self._ended
                         else TimeoutError(f"camera source {self.source!r}: no first frame within {self.start_timeout_s} s"))
        if error is not None:
            self.stop()
            raise error
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None
        if self._capture is not None:
            self._capture.release()
            self._capture = None

    def __enter__(self) -> CameraStream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ reader thread

    def _open(self) -> Any:
        capture = self.capture_factory(self.source)
        if not capture.isOpened():
            capture.release()
            return None
        if not self.is_file and self.fps:
            capture.set(cv2.CAP_PROP_FPS, float(self.fps))
        reported = capture.get(cv2.CAP_PROP_FPS)
        if reported and math.isfinite(reported) and reported > 0:
            self._source_fps = float(reported)
        return capture

    def _fail(self, error: BaseException) -> None:
        logger.error("%s", error)
        with self._cond:
            self._error = error
            self._cond.notify_all()

    def _read_loop(self) -> None:
        period = 1.0 / (self.fps or self._source_fps or DEFAULT_FPS) if self.is_file else 0.0
        failures, index, next_time = 0, 0, time.perf_counter()
        while not self._stop.is_set():
            try:
                ok, bgr = self._capture.read()
            except Exception as error:  # some backends raise instead of returning False
                logger.warning("camera source %r: read raised %s: %s", self.source, type(error).__name__, error)
                ok, bgr = False, None
            if not ok or bgr is None:
                if self.is_file and self.loop and index > 0:
                    self._capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
                    continue
                if self.is_file:
                    with self._cond:
                        self._ended = True
                        self._cond.notify_all()
                    return
                failures += 1
                with self._cond:
                    self._stats.read_failures += 1
                if failures >= MAX_CONSECUTIVE_FAILURES:
                    if not self._reopen(failures):
                        return
                    failures = 0
                else:
                    self._stop.wait(FAILURE_PAUSE_S)
                continue
            failures = 0
            frame = Frame(self._convert(bgr), time.perf_counter(), index)
            index += 1
            with self._cond:
                if self._frame is not None and not self._frame_returned:
                    self._stats.drops += 1
                self._frame, self._frame_returned = frame, False
                self._stats.frames += 1
                self._cond.notify_all()
            if period:  # play files back in real time
                next_time += period
                delay = next_time - time.perf_counter()
                if delay > 0:
                    self._stop.wait(delay)
                else:
                    next_time = time.perf_counter()

    def _reopen(self, failures: int) -> bool:
        """Reopen a live source with exponential back-off; False (and the stream marked dead) when giving up."""
        if not self.reconnect:
            self._fail(CameraDisconnectedError(f"camera source {self.source!r}: {failures} consecutive read failures (reconnect=False)"))
            return False
        delay, attempts = self.reconnect_backoff_s[0], 0
        logger.warning("camera source %r: %d consecutive read failures; reconnecting", self.source, failures)
        while not self._stop.is_set():
            if self.max_reconnects is not None and attempts >= self.max_reconnects:
                self._fail(CameraDisconnectedError(
                    f"camera source {self.source!r}: {failures} consecutive read failures and {attempts} failed reconnects "
                    f"(max_reconnects={self.max_reconnects})"))
                return False
            if self._capture is not None:
                self._capture.release()
                self._capture = None
            if self._stop.wait(delay):
                return False
            attempts += 1
            with self._cond:
                self._stats.reconnect_attempts += 1
            try:
                capture = self._open()
            except Exception as error:  # a backend that raises on open is one more failed attempt
                logger.warning("camera source %r: reopen raised %s: %s", self.source, type(error).__name__, error)
                capture = None
            if capture is not None:
                self._capture = capture
                with self._cond:
                    self._stats.reconnects += 1
                logger.warning("camera source %r: reconnected after %d attempt(s)", self.source, attempts)
                return True
            logger.warning("camera source %r: reconnect attempt %d failed; next in %.2f s", self.source, attempts, min(delay * 2, self.reconnect_backoff_s[1]))
            delay = min(delay * 2, self.reconnect_backoff_s[1])
        return False

    def _convert(self, bgr: np.ndarray) -> np.ndarray:
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        if self.size is not None and rgb.shape[:2] != tuple(self.size):
            height, width = self.size
            rgb = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)
        return rgb

    # ------------------------------------------------------------------ consumer side

    def read(self, newer_than: int = -1, timeout_s: float | None = None, max_age_s: float | None = None) -> Frame:
        """The newest frame with ``index > newer_than`` and age ≤ ``max_age_s`` (default: the stream's).

        Waits up to ``timeout_s`` (default: ``max_age_s``) for one. Raises :class:`CameraDisconnectedError`
        (or the reader's error) at once when the source is dead, ``EOFError`` when a file ended and
        its last frame has been returned or is too old, and :class:`StaleFrameError` when no
        acceptable frame came in time — a frozen camera never yields its old frame."""
        max_age = self.max_age_s if max_age_s is None else max_age_s
        timeout = max_age if timeout_s is None else timeout_s
        deadline = time.perf_counter() + timeout
        with self._cond:
            while True:
                if self._error is not None:
                    raise self._error
                frame, now = self._frame, time.perf_counter()
                if frame is not None and frame.index > newer_than and now - frame.timestamp <= max_age:
                    self._frame_returned = True
                    return frame
                if self._ended:
                    raise EOFError(f"camera source {self.source!r}: end of file (loop=False)")
                if self._thread is None:
                    raise RuntimeError(f"camera source {self.source!r}: not started (call start() or use 'with')")
                remaining = deadline - now
                if remaining <= 0:
                    self._stats.stale += 1
                    if frame is None:
                        raise StaleFrameError(f"camera source {self.source!r}: no frame yet within {timeout:.3g} s")
                    what = f"no frame newer than #{newer_than}" if frame.index <= newer_than else "newest frame"
                    raise StaleFrameError(
                        f"camera source {self.source!r}: {what} within {timeout:.3g} s; newest is #{frame.index}, "
                        f"{now - frame.timestamp:.3f} s old (max_age_s={max_age:.3g})"
                    )
                self._cond.wait(remaining)


class CameraRig:
    """Named cameras whose names match the policy's image inputs (``observation.images.<name>``)."""

    def __init__(self, streams: Mapping[str, CameraStream]) -> None:
        self.streams = dict(streams)
        self._last_index = {name: -1 for name in self.streams}

    @classmethod
    def for_policy(
        cls, spec: PolicySpec, sources: Mapping[str, str | int | Path], fps: float | None = None, loop: bool = True, **stream_options: Any
    ) -> CameraRig:
        """One stream per policy camera; ``sources`` keys may be full input keys or the short camera name.
        ``stream_options`` go to every :class:`CameraStream` (``max_age_s``, ``reconnect``, ...)."""
        by_key = {name if name.startswith("observation.") else f"observation.images.{name}": src for name, src in sources.items()}
        expected = {s.name: s.shape[:2] for s in spec.inputs if s.is_image}
        if set(by_key) != set(expected):
            raise ValueError(f"camera sources {sorted(by_key)} do not match the policy's cameras {sorted(expected)}")
        return cls({key: CameraStream(src, size=expected[key], fps=fps, loop=loop, **stream_options) for key, src in by_key.items()})

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

    def read_frames(self, fresh: bool = False, timeout_s: float | None = None) -> dict[str, Frame]:
        """Newest acceptable frame of every camera (see :meth:`CameraStream.read`); ``fresh=True`` also
        requires frames not returned before."""
        frames = {}
        for name, stream in self.streams.items():
            frame = stream.read(self._last_index[name] if fresh else -1, timeout_s)
            self._last_index[name] = frame.index
            frames[name] = frame
        return frames

    def read(self, fresh: bool = False, timeout_s: float | None = None) -> dict[str, np.ndarray]:
        """Images of :meth:`read_frames`; raises when any camera is stale or dead."""
        return {name: frame.image for name, frame in self.read_frames(fresh, timeout_s).items()}

    def stats(self) -> dict[str, CameraStats]:
        return {name: stream.stats for name, stream in self.streams.items()}
