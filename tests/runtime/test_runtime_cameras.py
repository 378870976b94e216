"""OpenCV camera loop against a short video file written here, and the camera → runtime → control loop."""

import cv2
import numpy as np
import pytest

from vla_dino.runtime.cameras import CameraRig, CameraStream
from vla_dino.runtime.chunking import ControlConfig, ControlLoop

N_FRAMES = 12


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> str:
    """64x48 frames at 100 fps; frame i has red = 20 i, green = 100 (stored BGR by OpenCV)."""
    path = str(tmp_path_factory.mktemp("video") / "cam.avi")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 100, (64, 48))
    assert writer.isOpened()
    for i in range(N_FRAMES):
        bgr = np.zeros((48, 64, 3), np.uint8)
        bgr[..., 2], bgr[..., 1] = 20 * i, 100
        writer.write(bgr)
    writer.release()
    return path


def test_stream_reads_rgb_frames_in_order_and_loops(video):
    with CameraStream(video, size=(32, 32), loop=True) as camera:
        frame, seen = camera.read(), []
        for _ in range(N_FRAMES + 4):
            frame = camera.read(newer_than=frame.index)
            seen.append(frame)
    assert frame.image.shape == (32, 32, 3) and frame.image.dtype == np.uint8
    for f in seen:  # RGB order, content of frame (index mod N): JPEG-level tolerance
        red, green, blue = f.image[16, 16].astype(int)
        assert abs(red - 20 * (f.index % N_FRAMES)) <= 8 and abs(green - 100) <= 8 and blue <= 8
    assert seen[-1].index >= N_FRAMES  # went past the end: rewound


def test_stream_without_loop_ends_with_eof(video):
    with CameraStream(video, loop=False) as camera:
        index = -1
        with pytest.raises(EOFError, match="end of file"):
            for _ in range(N_FRAMES + 2):
                index = camera.read(newer_than=index).index
    assert index == N_FRAMES - 1


def test_bad_sources_fail_clearly(tmp_path, act_runtime, video):
    with pytest.raises(FileNotFoundError, match="no such file"):
        CameraStream(tmp_path / "missing.mp4")
    not_video = tmp_path / "notes.txt"
    not_video.write_text("hello")
    with pytest.raises(ConnectionError, match="could not open"):
        CameraStream(not_video).start()
    with pytest.raises(ValueError, match="do not match the policy's cameras"):
        CameraRig.for_policy(act_runtime.spec, {"front": video, "side": video})


def test_camera_loop_drives_the_runtime(video, act_runtime):
    """Cameras (resized to each policy input) → runtime → temporal ensembling → one action per tick."""
    rig = CameraRig.for_policy(act_runtime.spec, {"front": video, "wrist": video})
    state = np.zeros(4, np.float32)
    sent = []
    with rig:
        images = rig.read()
        assert images["observation.images.wrist"].shape == (24, 32, 3)
        loop = ControlLoop(
            predict_chunk=act_runtime.predict_chunk,
            get_observation=lambda: {**rig.read(), "observation.state": state},
            send_action=sent.append,
            config=ControlConfig(fps=20, scheduler="ensemble"),
        )
        stats = loop.run(8)
    assert len(sent) == 8 and all(a.shape == (act_runtime.spec.action_dim,) and np.isfinite(a).all() for a in sent)
    assert stats.chunks >= 1 and stats.starved_steps == 0
