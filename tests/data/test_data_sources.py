"""Discovery and reading of image folders, videos and HDF5 files, with corrupt files and the
pixel conversion rules (grayscale, RGBA, 16-bit). LeRobot datasets: test_data_lerobot.py."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from vla_dino.data import FrameDataset, NoFramesError, discover_sources, square_resize, to_rgb_uint8
from vla_dino.data import examples, videos
from vla_dino.data.base import FrameReadError

SIZE = 48  # pattern frames are 48×64: the centre square needs no resize, so values stay exact


def _by(sources, **fields):
    found = [s for s in sources if all(getattr(s, k) == v for k, v in fields.items())]
    assert len(found) == 1, (fields, [(s.kind, s.episode, s.camera) for s in sources])
    return found[0]


def _expected(t: int, episode: int = 0) -> np.ndarray:
    """The pattern frame after the dataset's centre square crop, channels first."""
    frame = examples.pattern_frame(t, episode)
    return square_resize(frame, SIZE).transpose(2, 0, 1)


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A mixed robot-log tree, with one corrupt file of each kind."""
    root = tmp_path_factory.mktemp("robot_logs", numbered=False)
    for episode in range(2):
        for camera in ("left", "top"):
            examples.write_image_folder(root / "images" / f"ep{episode}" / camera, 4, episode)
    jpgs = examples.write_image_folder(root / "images" / "ep9" / "top", 3, 9, suffix=".jpg")
    jpgs[1].write_bytes(jpgs[1].read_bytes()[:200])  # truncated JPEG in the middle of an episode
    examples.write_video(root / "videos" / "run_a.mp4", 12)
    (root / "videos" / "garbage.mp4").write_bytes(b"\x00not a video" * 64)
    examples.write_robomimic_hdf5(root / "sim" / "robomimic.hdf5", num_demos=2, num_frames=5)
    examples.write_aloha_hdf5(root / "sim" / "aloha" / "episode_3.hdf5", 4, episode=3)
    examples.write_aloha_hdf5(root / "sim" / "aloha" / "episode_4.hdf5", 4, episode=4, compress=True)
    (root / "sim" / "broken.hdf5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 50)
    (root / "README.txt").write_text("not frames")
    return root


def test_discovery_finds_every_kind_with_episodes_and_cameras(logs: Path) -> None:
    sources = discover_sources([logs])
    readable = {(s.kind, s.episode, s.camera, s.num_frames) for s in sources if s.error is None}
    assert readable == {
        ("images", "robot_logs/images/ep0", "left", 4),
        ("images", "robot_logs/images/ep0", "top", 4),
        ("images", "robot_logs/images/ep1", "left", 4),
        ("images", "robot_logs/images/ep1", "top", 4),
        ("images", "robot_logs/images/ep9", "top", 3),
        ("video", "robot_logs/videos/run_a", "default", 12),
        ("hdf5", "robot_logs/sim/robomimic/demo_0", "agentview", 5),
        ("hdf5", "robot_logs/sim/robomimic/demo_0", "robot0_eye_in_hand", 5),
        ("hdf5", "robot_logs/sim/robomimic/demo_1", "agentview", 5),
        ("hdf5", "robot_logs/sim/robomimic/demo_1", "robot0_eye_in_hand", 5),
        ("hdf5", "robot_logs/sim/aloha/episode_3", "cam_high", 4),
        ("hdf5", "robot_logs/sim/aloha/episode_3", "cam_left_wrist", 4),
        ("hdf5", "robot_logs/sim/aloha/episode_4", "cam_high", 4),
        ("hdf5", "robot_logs/sim/aloha/episode_4", "cam_left_wrist", 4),
    }
    broken = {s.path.name: s.error for s in sources if s.error is not None}
    assert set(broken) == {"garbage.mp4", "broken.hdf5"}
    assert "unreadable video" in broken["garbage.mp4"] and "unreadable HDF5" in broken["broken.hdf5"]


def test_every_readable_frame_has_the_written_content_and_corrupt_ones_are_skipped(logs: Path) -> None:
    dataset = FrameDataset(discover_sources([logs]), frame_size=SIZE)
    assert len(dataset) == 4 * 4 + 3 + 12 + 4 * 5 + 4 * 4
    skipped = []
    for index in range(len(dataset)):
        source, frame = dataset.locate(index)
        sample = dataset[index]
        if sample is None:
            skipped.append(source.files[frame].name)
            continue
        assert sample["frame"].dtype == torch.uint8
        assert tuple(sample["frame"].shape) == (3, SIZE, SIZE)
        digits = re.findall(r"\d+", source.episode.rsplit("/", 1)[-1])  # ep9, demo_1, episode_3; run_a was episode 0
        episode = int(digits[-1]) if digits else 0
        expected = _expected(frame, episode).astype(int)
        error = np.abs(sample["frame"].numpy().astype(int) - expected)
        jpeg = source.kind == "images" and source.files[0].suffix == ".jpg"
        lossy = jpeg or source.kind == "video" or source.path.name == "episode_4.hdf5"  # JPEG rows in HDF5
        assert error.max() <= (8 if lossy else 0), (source.name, frame, error.max())
    assert skipped == ["frame_1.jpg"]
    counts = dataset.skipped_counts()
    assert counts == {str(logs / "images/ep9/top/frame_1.jpg"): 1, str(logs / "videos/garbage.mp4"): 1, str(logs / "sim/broken.hdf5"): 1}
    summary = dataset.skipped_summary()
    assert "1 sample(s) in 1 file(s); 2 unreadable file(s)" in summary
    assert "frame_1.jpg: 1 sample(s) skipped (OSError: " in summary and "truncated" in summary.lower()
    assert "garbage.mp4: unreadable file" in summary and "broken.hdf5: unreadable file" in summary


def test_cameras_filter_matches_names_and_full_keys(logs: Path) -> None:
    sources = discover_sources([logs], cameras=["top", "agentview_image", "cam_high"])
    readable = sorted({(s.kind, s.camera) for s in sources if s.error is None})
    assert readable == [("hdf5", "agentview"), ("hdf5", "cam_high"), ("images", "top")]
    # unreadable files stay, so the run's summary still reports them
    assert {s.path.name for s in sources if s.error} == {"garbage.mp4", "broken.hdf5"}


def test_pixel_conversion_rules(tmp_path: Path) -> None:
    gray = np.arange(48 * 48, dtype=np.uint8).reshape(48, 48)
    rgba = np.dstack([examples.pattern_frame(3)[:, :48], np.full((48, 48), 7, np.uint8)])
    gray16 = (np.arange(48 * 48, dtype=np.uint16).reshape(48, 48) * 28)
    rgb16 = np.dstack([gray16, gray16 // 2, gray16 // 3])
    folder = tmp_path / "cam_odd"
    folder.mkdir()
    Image.fromarray(gray, mode="L").save(folder / "a_gray.png")
    Image.fromarray(rgba, mode="RGBA").save(folder / "b_rgba.png")
    cv2.imwrite(str(folder / "c_gray16.png"), gray16)
    cv2.imwrite(str(folder / "d_rgb16.png"), rgb16[..., ::-1])  # OpenCV writes BGR
    Image.fromarray(gray, mode="L").convert("P").save(folder / "e_palette.bmp")
    dataset = FrameDataset(discover_sources([folder]), frame_size=48)
    frames = [dataset[i]["frame"].permute(1, 2, 0).numpy() for i in range(len(dataset))]
    np.testing.assert_array_equal(frames[0], np.repeat(gray[..., None], 3, axis=2))  # grayscale replicated
    np.testing.assert_array_equal(frames[1], rgba[..., :3])  # alpha dropped
    np.testing.assert_array_equal(frames[2], np.repeat((gray16 >> 8).astype(np.uint8)[..., None], 3, axis=2))
    np.testing.assert_array_equal(frames[3], (rgb16 >> 8).astype(np.uint8))  # 16-bit → high byte
    np.testing.assert_array_equal(frames[4], np.repeat(gray[..., None], 3, axis=2))
    assert dataset[0]["camera"] == "cam_odd"


def test_conversion_rejects_what_it_cannot_map() -> None:
    with pytest.raises(FrameReadError, match=r"float pixels in \[0, 2\]; expected \[0, 1\]"):
        to_rgb_uint8(np.linspace(0, 2, 48, dtype=np.float32).reshape(4, 4, 3), "x")
    with pytest.raises(FrameReadError, match="dtype int64"):
        to_rgb_uint8(np.zeros((4, 4, 3), np.int64), "x")
    with pytest.raises(FrameReadError, match=r"shape \(4, 4, 5\)"):
        to_rgb_uint8(np.zeros((4, 4, 5), np.uint8), "x")
    np.testing.assert_array_equal(to_rgb_uint8(np.full((2, 2, 3), 0.5, np.float32)), np.full((2, 2, 3), 128, np.uint8))


def test_square_resize_is_a_centre_crop_of_the_shorter_side() -> None:
    image = np.zeros((40, 80, 3), np.uint8)
    image[:, 20:60] = 200  # the centre square
    np.testing.assert_array_equal(square_resize(image, 40), np.full((40, 40, 3), 200, np.uint8))
    small = square_resize(image, 20)
    assert small.shape == (20, 20, 3) and (small == 200).all()


def test_video_strided_and_backwards_reads_hit_the_right_frames(logs: Path) -> None:
    source = _by(discover_sources([logs / "videos" / "run_a.mp4"]), kind="video")
    dataset = FrameDataset([source], frame_size=SIZE, stride=3)
    order = [3, 0, 2, 1, 3]  # backward jumps force seeks; forward ones decode through
    reds = [int(dataset[i]["frame"][0].float().mean()) for i in order]
    assert [round(r / 16) for r in reds] == [9, 0, 6, 3, 9]


def test_opencv_fallback_when_pyav_cannot_open(logs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise videos.av.error.InvalidDataError(1094995529, "refused for the test")

    monkeypatch.setattr(videos.av, "open", refuse)
    source = _by(discover_sources([logs / "videos"]), kind="video", error=None)
    assert source.key == "opencv" and source.num_frames == 12
    dataset = FrameDataset([source], frame_size=SIZE)
    assert [round(int(dataset[i]["frame"][0].float().mean()) / 16) for i in (5, 2, 3)] == [5, 2, 3]


def test_hdf5_file_without_camera_images_is_reported(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "lowdim.hdf5", "w") as handle:
        handle["data/demo_0/obs/robot0_eef_pos"] = np.zeros((5, 3), np.float32)
    with pytest.raises(NoFramesError, match=r"lowdim.hdf5: no camera images in the robomimic data/demo_N/obs/<camera>_image or ALOHA"):
        discover_sources([tmp_path])


def test_empty_or_unsupported_input_says_what_was_searched_and_supported(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoFramesError) as info:
        discover_sources([tmp_path / "empty"])
    message = str(info.value)
    assert "no readable frames in --frames" in message and "searched 1 folder(s)" in message
    assert "supported: image folders (jpg, jpeg, png, webp, bmp" in message and "HDF5 episode files" in message

    (tmp_path / "other" / "deep").mkdir(parents=True)
    (tmp_path / "other" / "deep" / "log.txt").write_text("x")
    (tmp_path / "other" / "arr.npy").write_bytes(b"x")
    with pytest.raises(NoFramesError) as info:
        discover_sources([tmp_path / "other"])
    assert "searched 2 folder(s)" in str(info.value)
    assert "ignored (unsupported): .npy ×1, .txt ×1" in str(info.value)

    with pytest.raises(FileNotFoundError, match="--frames .*missing: no such file or folder"):
        discover_sources([tmp_path / "missing"])


def test_camera_filter_that_matches_nothing_lists_the_cameras_found(logs: Path) -> None:
    with pytest.raises(NoFramesError, match="--cameras nope matches none of the cameras found: .*agentview.*left"):
        discover_sources([logs / "images", logs / "sim"], cameras=["nope"])


def test_image_files_given_directly_are_one_frame_sources(logs: Path) -> None:
    files = [logs / "images/ep0/left/frame_2.png", logs / "images/ep1/top/frame_0.png"]
    sources = discover_sources(files)
    assert [(s.kind, s.num_frames, s.camera) for s in sources] == [("images", 1, "left"), ("images", 1, "top")]
    dataset = FrameDataset(sources, frame_size=SIZE)
    np.testing.assert_array_equal(dataset[0]["frame"].numpy(), _expected(2, 0))
    np.testing.assert_array_equal(dataset[1]["frame"].numpy(), _expected(0, 1))


@pytest.mark.parametrize(("name", "codec"), [("cam.webm", "libvpx-vp9"), ("cam.mkv", "libx264"), ("cam.avi", "mpeg4")])
def test_other_video_containers(tmp_path: Path, name: str, codec: str) -> None:
    examples.write_video(tmp_path / name, 9, codec=codec)
    (source,) = discover_sources([tmp_path])
    assert (source.kind, source.num_frames, source.key, source.camera) == ("video", 9, "pyav", "cam")
    dataset = FrameDataset([source], frame_size=SIZE)
    assert [round(float(dataset[i]["frame"][0].float().mean()) / 16) for i in (8, 3, 0, 5)] == [8, 3, 0, 5]


def test_repeated_episode_names_are_not_mistaken_for_cameras(tmp_path: Path) -> None:
    for task in ("pick", "place"):
        for episode in ("ep0", "ep1"):
            examples.write_image_folder(tmp_path / task / episode, 1)
    sources = discover_sources([tmp_path])
    assert sorted((s.episode.split("/", 1)[1], s.camera) for s in sources) == [
        ("pick/ep0", "default"), ("pick/ep1", "default"), ("place/ep0", "default"), ("place/ep1", "default")
    ]
