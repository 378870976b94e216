"""Small robot-log examples of every supported kind, written with the real libraries (Pillow,
PyAV, lerobot, h5py). Tests, the data benchmark and smoke runs use them; frames are recognisable:
frame t of episode e has red = 16·t mod 256 and green = 40·e everywhere, and a blue ramp along x.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import av
import h5py
import numpy as np
from PIL import Image


def pattern_frame(t: int, episode: int = 0, height: int = 48, width: int = 64) -> np.ndarray:
    """(H, W, 3) uint8: red 16·t, green 40·e, blue ramp 0→255 along x."""
    frame = np.empty((height, width, 3), dtype=np.uint8)
    frame[..., 0] = (16 * t) % 256
    frame[..., 1] = (40 * episode) % 256
    frame[..., 2] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    return frame


def write_image_folder(folder: Path, num_frames: int, episode: int = 0, suffix: str = ".png", **size: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for t in range(num_frames):
        path = folder / f"frame_{t}{suffix}"  # unpadded on purpose: natural sort must order them
        options = {"quality": 95} if suffix in (".jpg", ".jpeg") else {}
        Image.fromarray(pattern_frame(t, episode, **size)).save(path, **options)
        paths.append(path)
    return paths


def write_video(path: Path, num_frames: int, episode: int = 0, codec: str = "libx264", fps: int = 10, gop: int = 4, **size: int) -> Path:
    """A short video; small GOP so that seeking is exercised."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = [pattern_frame(t, episode, **size) for t in range(num_frames)]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = "yuv420p"
        stream.gop_size = gop
        if codec == "libx264":
            stream.options = {"crf": "10", "bf": "2"}  # near-lossless, with B-frames (reordered pts)
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_robomimic_hdf5(path: Path, num_demos: int, num_frames: int, cameras: Sequence[str] = ("agentview", "robot0_eye_in_hand")) -> Path:
    """robomimic layout: data/demo_N/obs/<camera>_image (T, H, W, 3) uint8, plus low-dim obs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as handle:
        data = handle.create_group("data")
        for demo in range(num_demos):
            obs = data.create_group(f"demo_{demo}/obs")
            for camera in cameras:
                obs[f"{camera}_image"] = np.stack([pattern_frame(t, demo) for t in range(num_frames)])
            obs["robot0_eef_pos"] = np.zeros((num_frames, 3), np.float32)
            data[f"demo_{demo}/actions"] = np.zeros((num_frames, 7), np.float32)
    return path


def write_aloha_hdf5(path: Path, num_frames: int, episode: int = 0, cameras: Sequence[str] = ("cam_high", "cam_left_wrist"), compress: bool = False) -> Path:
    """ALOHA layout: observations/images/<camera>; `compress` stores padded JPEG rows as act does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    import cv2

    with h5py.File(path, "w") as handle:
        images = handle.create_group("observations/images")
        for camera in cameras:
            frames = [pattern_frame(t, episode) for t in range(num_frames)]
            if compress:
                encoded = [cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].ravel() for f in frames]
                padded = np.zeros((num_frames, max(len(e) for e in encoded)), np.uint8)
                for row, buffer in zip(padded, encoded):
                    row[: len(buffer)] = buffer
                images[camera] = padded
            else:
                images[camera] = np.stack(frames)
        handle["observations/qpos"] = np.zeros((num_frames, 14), np.float32)
        handle["action"] = np.zeros((num_frames, 14), np.float32)
        handle.attrs["compress"] = compress
    return path


def write_lerobot_dataset(root: Path, num_episodes: int, num_frames: int, dtype: str = "image", cameras: Sequence[str] = ("front", "wrist")) -> Path:
    """A LeRobot v3 dataset made with `LeRobotDataset.create` (camera features of `dtype` image or video)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    height, width = pattern_frame(0).shape[:2]
    features = {
        f"observation.images.{camera}": {"dtype": dtype, "shape": (height, width, 3), "names": ["height", "width", "channels"]}
        for camera in cameras
    }
    features["observation.state"] = {"dtype": "float32", "shape": (2,), "names": None}
    features["action"] = {"dtype": "float32", "shape": (2,), "names": None}
    dataset = LeRobotDataset.create(repo_id=f"local/{root.name}", fps=10, features=features, root=root, use_videos=dtype == "video")
    for episode in range(num_episodes):
        for t in range(num_frames):
            frame = {f"observation.images.{camera}": pattern_frame(t, episode) for camera in cameras}
            frame.update({"observation.state": np.zeros(2, np.float32), "action": np.zeros(2, np.float32), "task": "pick"})
            dataset.add_frame(frame)
        dataset.save_episode()
    dataset.finalize()
    return root
