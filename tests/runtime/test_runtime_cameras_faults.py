"""Cameras never hand out a stale or dead camera's frame: freshness on every read, reconnect, counters."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from vla_dino.runtime.cameras import CameraDisconnectedError, CameraRig, CameraStream, StaleFrameError, default_max_age
from vla_dino.runtime.chunking import ControlConfig, ControlLoop


class FakeCamera:
    """Stand-in for ``cv2.VideoCapture`` (pass ``camera.open`` as ``capture_factory``).

    ``mode``: ``"ok"`` delivers a frame every ``period_s`` (red channel = frame count), ``"fail"``
    returns read failures, ``"hang"`` blocks inside ``read`` like a frozen USB driver (until
    :meth:`release_hang`). ``openable`` decides whether (re)opening succeeds; ``opens`` counts tries."""

    def __init__(self, period_s: float = 0.005, fps: float = 0.0) -> None:
        self.mode = "ok"
        self.openable = True
        self.opens = 0
        self.period_s, self.fps = period_s, fps
        self.count = 0
        self._unhang = threading.Event()

    def open(self, source: int | str) -> FakeCamera:
        self.opens += 1
        return _Capture(self, self.openable)

    def release_hang(self) -> None:
        self._unhang.set()


class _Capture:
    def __init__(self, camera: FakeCamera, opened: bool) -> None:
        self.camera, self.opened = camera, opened

    def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
        return self.opened

    def read(self) -> tuple[bool, np.ndarray | None]:
        camera = self.camera
        if camera.mode == "hang":
            camera._unhang.wait(10)
            return False, None
        if camera.mode == "fail":
            return False, None
        time.sleep(camera.period_s)
        camera.count += 1
        bgr = np.zeros((48, 64, 3), np.uint8)
        bgr[..., 2] = camera.count % 256
        return True, bgr

    def get(self, prop: int) -> float:
        return self.camera.fps

    def set(self, prop: int, value: float) -> bool:
        return True

    def release(self) -> None:
        self.opened = False


def wait_for_error(stream: CameraStream, within_s: float) -> tuple[BaseException, float]:
    start = time.perf_counter()
    while time.perf_counter() - start < within_s:
        try:
            stream.read(timeout_s=0.05)
        except Exception as error:  # noqa: BLE001 - the test inspects it
            return error, time.perf_counter() - start
        time.sleep(0.005)
    raise AssertionError(f"no error within {within_s} s")


def test_max_age_defaults_from_the_rate():
    camera = FakeCamera(fps=10.0)
    assert CameraStream(0, fps=30, capture_factory=camera.open).max_age_s == pytest.approx(0.1)  # 3 periods
    assert CameraStream(0, fps=200, capture_factory=camera.open).max_age_s == pytest.approx(0.05)  # floor
    stream = CameraStream(0, capture_factory=camera.open).start()  # no fps given: the source reports 10
    try:
        assert stream.max_age_s == pytest.approx(default_max_age(10.0)) == pytest.approx(0.3)
        assert stream.read().age_s <= 0.3
    finally:
        stream.stop()
    for bad in (dict(fps=0), dict(fps=float("nan")), dict(max_age_s=0), dict(reconnect_backoff_s=(0.5, 0.1)), dict(max_reconnects=-1)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            CameraStream(0, capture_factory=camera.open, **bad)


def test_dead_camera_raises_at_once_instead_of_serving_its_last_frame():
    camera = FakeCamera()
    with CameraStream(0, capture_factory=camera.open, reconnect=False, max_age_s=2.0) as stream:
        assert stream.read().image.shape == (48, 64, 3)
        camera.mode = "fail"
        error, after = wait_for_error(stream, within_s=2.0)
    assert isinstance(error, CameraDisconnectedError) and "consecutive read failures" in str(error)
    assert after < 1.0  # well before the last frame would have gone stale (2 s): dead is dead
    assert stream.stats.read_failures >= 10


def test_frozen_camera_raises_stale_and_no_returned_frame_is_older_than_max_age():
    camera = FakeCamera()
    max_age = 0.1
    with CameraStream(0, capture_factory=camera.open, max_age_s=max_age) as stream:
        ages = [stream.read().age_s for _ in range(20)]
        camera.mode = "hang"  # read() blocks inside the driver: no error, no new frame
        start = time.perf_counter()
        with pytest.raises(StaleFrameError, match=r"s old \(max_age_s=0.1\)"):
            while time.perf_counter() - start < 2.0:
                ages.append(stream.read().age_s)
        stale = stream.stats.stale
        camera.release_hang()
    # Checked at return inside read(); age_s is read a moment later, so allow scheduler slack on a loaded machine.
    assert max(ages) <= max_age + 0.05 and stale >= 1


def test_live_source_reconnects_with_back_off_and_counts_it():
    camera = FakeCamera()
    with CameraStream(0, capture_factory=camera.open, max_age_s=1.0, reconnect_backoff_s=(0.01, 0.04)) as stream:
        stream.read()
        camera.openable = False
        camera.mode = "fail"
        deadline = time.perf_counter() + 3
        while stream.stats.reconnect_attempts < 3 and time.perf_counter() < deadline:
            time.sleep(0.005)
        before = stream.stats.frames - 1  # index of the last frame before the outage
        camera.openable, camera.mode = True, "ok"
        frame = stream.read(newer_than=before, timeout_s=3)
        stats = stream.stats
    assert frame.index > before and frame.age_s < 1.0
    assert stats.reconnects == 1 and stats.reconnect_attempts >= 4  # three refused, then one that worked
    assert stats.read_failures >= 10 and camera.opens == 1 + stats.reconnect_attempts


def test_reconnects_give_up_after_max_reconnects():
    camera = FakeCamera()
    with CameraStream(0, capture_factory=camera.open, max_age_s=5.0, max_reconnects=2, reconnect_backoff_s=(0.01, 0.01)) as stream:
        stream.read()
        camera.openable, camera.mode = False, "fail"
        error, _ = wait_for_error(stream, within_s=3.0)
    assert isinstance(error, CameraDisconnectedError) and "max_reconnects=2" in str(error)
    assert stream.stats.reconnect_attempts == 2 and stream.stats.reconnects == 0


def test_counters_count_dropped_frames():
    camera = FakeCamera(period_s=0.002)
    with CameraStream(0, capture_factory=camera.open, max_age_s=1.0) as stream:
        time.sleep(0.1)  # ~50 frames arrive, none read
        stream.read()
        stats = stream.stats
    assert stats.frames >= 10 and stats.drops >= stats.frames - 3  # all but the newest were overwritten unread


def test_control_loop_on_a_frozen_camera_holds_then_stops_and_says_why():
    """The issue's case: a ControlLoop used to run 60 steps at 30 Hz on a frozen image."""
    camera = FakeCamera()
    # generous age and deadline limits: on a loaded 2-core CI machine a late camera thread or tick must
    # not fault before the freeze (this test is about the frozen camera, not about timing)
    rig = CameraRig({"observation.images.front": CameraStream(0, capture_factory=camera.open, max_age_s=0.15)})
    sent, stops = [], []
    with rig:
        config = ControlConfig(fps=30, fault_grace_s=0.2, inference_timeout_s=1.0, deadline_miss_s=10.0)
        loop = ControlLoop(lambda obs: np.full((4, 2), obs["observation.images.front"][0, 0, 0] / 255, np.float32),
                           lambda: rig.read(timeout_s=0.01), sent.append, config, on_stop=stops.append)
        camera.mode = "ok"

        def freeze_after(step_count=10):
            if len(sent) >= step_count:
                camera.mode = "hang"

        loop.send_action = lambda a: (sent.append(a), freeze_after())
        stats = loop.run(60)
        camera.release_hang()
    assert stats.stopped_by is not None and stats.stopped_by.reason == "stale_observation"
    assert stops == [stats.stopped_by]
    assert stats.steps < 60  # stopped, not 60 steps on a frozen image
    # the ticks sent under the fault are the last fault_ticks ones (none when a stalled machine ran out the grace
    # period before the first held tick; sent[-0:] would be the whole list)
    held = sent[len(sent) - stats.fault_ticks:]
    assert all(np.array_equal(a, stats.stopped_by.last_safe_action) for a in held)  # held the last safe command
    assert stats.fault_ticks <= 0.2 * 30 + 3  # about grace x rate ticks of holding
