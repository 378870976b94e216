"""`discover_sources`: walk the `--frames` paths and find every (episode, camera) frame source.

Detection, recursive, kinds mixed freely:
- a folder with `meta/info.json` is a LeRobot dataset (not walked further);
- every folder holding image files is one episode of one camera (its frames, naturally sorted);
- every video file is one episode of one camera; every HDF5 file holds the episodes and cameras of
  its layout (robomimic or ALOHA); image files given directly are one-frame sources.

Camera names: LeRobot feature keys (last component: `observation.images.front` → `front`), HDF5
layout names, and for image folders / video files the folder or file name when it is a camera:
a name in `cameras`, a usual camera name (cam*, wrist, front, top, side, left, right, overhead,
agentview, eye/hand, rgb, view, …), or a leaf folder name that repeats under several episodes
(`ep0/left`, `ep1/left`) and does not look like an episode (`ep3`, `demo_2`, `0017`). Otherwise the camera is "default" and the folder is the episode.
`cameras` keeps the sources whose camera name or full key (e.g. `agentview_image`,
`observation.images.front`) is listed.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from pathlib import Path
from typing import Sequence

from vla_dino.data.base import HDF5_SUFFIXES, IMAGE_SUFFIXES, SUPPORTED_INPUTS, VIDEO_SUFFIXES, FrameSource
from vla_dino.data.hdf5 import hdf5_sources
from vla_dino.data.images import image_source
from vla_dino.data.lerobot import camera_keys, is_lerobot_dataset, lerobot_sources
from vla_dino.data.videos import video_source

logger = logging.getLogger(__name__)

DEFAULT_CAMERA = "default"
_CAMERA_WORD = re.compile(
    r"(?:^|[_\-.])(?:cam|camera|wrist|front|top|side|left|right|overhead|agentview|eye|hand|rgb|color|view)\d*(?:$|[_\-.])",
    re.IGNORECASE,
)
_EPISODE_WORD = re.compile(r"^(?:ep|episode|demo|traj|trajectory|run|seq|sequence|take)?[_\-]?\d+$", re.IGNORECASE)


class NoFramesError(ValueError):
    """No readable frames in the given paths (the message lists what was searched)."""


def discover_sources(paths: Sequence[str | Path] | str | Path, cameras: Sequence[str] | None = None) -> list[FrameSource]:
    """All frame sources under `paths`, filtered by `cameras`.

    Files that cannot be opened come back as sources with `error` set (the dataset reports them as
    skipped). Raises FileNotFoundError for a missing path and `NoFramesError` when nothing readable
    is found, with what was searched, what was unreadable or filtered out, and what is supported.
    """
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not paths:
        raise NoFramesError(f"no --frames paths given; supported inputs: {SUPPORTED_INPUTS}")
    wanted = set(cameras) if cameras else None
    walk = _Walk(wanted)
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"--frames {path}: no such file or folder")
        walk.add(path)
    sources = [s for s in walk.sources if s.error is not None or wanted is None or _matches(s, wanted)]
    sources, duplicates = deduplicate_sources(sources)
    if duplicates:
        logger.warning(
            "%d source(s) reached through more than one --frames path%s; each is counted once",
            duplicates, _overlap_note(paths),
        )
    if not any(s.error is None and s.num_frames > 0 for s in sources):
        raise NoFramesError(_nothing_found_message(paths, cameras, walk))
    return sources


def deduplicate_sources(sources: Sequence[FrameSource]) -> tuple[list[FrameSource], int]:
    """Drops sources already listed (the same file/folder and dataset key, reached through two
    --frames paths such as a folder and its subfolder, or one path given twice), and image
    files given directly that an image folder already holds. Returns (sources, number dropped)."""
    seen: set[tuple[str, Path, str, int]] = set()
    folder_files = {f.resolve() for s in sources if s.kind == "images" and s.path.is_dir() for f in s.files}
    direct_files: set[Path] = set()
    kept = []
    for source in sources:
        identity = (source.kind, source.path.resolve(), source.key, source.offset)
        if identity in seen:
            continue
        if source.kind == "images" and not source.path.is_dir():  # an image file given directly
            file = source.path.resolve()
            if file in folder_files or file in direct_files:
                continue
            direct_files.add(file)
        seen.add(identity)
        kept.append(source)
    return kept, len(sources) - len(kept)


def _overlap_note(paths: Sequence[str | Path]) -> str:
    resolved = [(str(p), Path(p).expanduser().resolve()) for p in paths]
    pairs = [
        f"{a} is inside {b}" if pb in pa.parents else f"{a} is given twice"
        for i, (a, pa) in enumerate(resolved) for j, (b, pb) in enumerate(resolved)
        if i != j and (pb in pa.parents or (pa == pb and i > j))
    ]
    return f" ({'; '.join(pairs)})" if pairs else ""


def _matches(source: FrameSource, wanted: set[str]) -> bool:
    full = source.key.rsplit("/", 1)[-1] if source.kind == "hdf5" else source.key
    return source.camera in wanted or (source.kind != "video" and full in wanted)


class _Walk:
    """Collects sources, plus what was searched, for the error message."""

    def __init__(self, cameras: set[str] | None) -> None:
        self.cameras = cameras
        self.sources: list[FrameSource] = []
        self.folders = 0
        self.ignored: Counter[str] = Counter()

    def add(self, path: Path) -> None:
        if path.is_file():
            self._add_file(path, episode=path.stem, context=path.parent.name, repeated=set())
            return
        if is_lerobot_dataset(path):
            self.folders += 1
            self.sources += lerobot_sources(path, camera_keys(path))
            return
        image_folders: list[tuple[Path, list[Path]]] = []
        other_files: list[Path] = []
        for folder, subfolders, names in os.walk(path):
            folder_path = Path(folder)
            self.folders += 1
            subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
            for name in list(subfolders):
                if is_lerobot_dataset(folder_path / name):
                    subfolders.remove(name)
                    self.folders += 1
                    self.sources += lerobot_sources(folder_path / name, camera_keys(folder_path / name))
            files = [folder_path / n for n in sorted(names) if not n.startswith(".")]
            images = [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES]
            if images:
                image_folders.append((folder_path, images))
            other_files += [f for f in files if f.suffix.lower() not in IMAGE_SUFFIXES]
        # Leaf names under several parents (ep0/left, ep1/left) are cameras.
        parents_by_name: dict[str, set[Path]] = {}
        for folder, _ in image_folders:
            parents_by_name.setdefault(folder.name, set()).add(folder.parent)
        repeated = {name for name, parents in parents_by_name.items() if len(parents) > 1 and not _EPISODE_WORD.match(name)}
        for folder, images in image_folders:
            episode, camera = self._episode_and_camera(path, folder, repeated)
            self.sources.append(image_source(folder, images, episode, camera))
        for file in other_files:
            episode = _relative(path, file.with_suffix(""))
            self._add_file(file, episode=episode, context=file.parent.name, repeated=repeated)

    def _add_file(self, file: Path, episode: str, context: str, repeated: set[str]) -> None:
        suffix = file.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            self.sources.append(image_source(file, [file], episode, self._camera_of(context, repeated) or DEFAULT_CAMERA))
        elif suffix in VIDEO_SUFFIXES:
            camera = self._camera_of(file.stem, repeated) or self._camera_of(context, repeated) or DEFAULT_CAMERA
            self.sources.append(video_source(file, episode, camera))
        elif suffix in HDF5_SUFFIXES:
            self.sources += hdf5_sources(file, episode)
        else:
            self.ignored[suffix or file.name] += 1

    def _episode_and_camera(self, root: Path, folder: Path, repeated: set[str]) -> tuple[str, str]:
        camera = self._camera_of(folder.name, repeated)
        if folder == root:  # a single folder of frames was given: it is the episode
            return root.name, camera or DEFAULT_CAMERA
        if camera is None:
            return _relative(root, folder), DEFAULT_CAMERA
        return _relative(root, folder.parent), camera

    def _camera_of(self, name: str, repeated: set[str]) -> str | None:
        if (self.cameras and name in self.cameras) or name in repeated or _CAMERA_WORD.search(name):
            return name
        return None


def _relative(root: Path, path: Path) -> str:
    """Episode ids start with the --frames folder name so two roots do not collide."""
    return str(Path(root.name) / path.relative_to(root))


def _nothing_found_message(paths: Sequence[str | Path], cameras: Sequence[str] | None, walk: _Walk) -> str:
    lines = [f"no readable frames in --frames {', '.join(str(p) for p in paths)}"]
    lines.append(f"searched {walk.folders} folder(s); found {len(walk.sources)} source(s)")
    readable = sorted({s.camera for s in walk.sources if s.error is None and s.num_frames > 0})
    if cameras and readable:
        lines.append(f"--cameras {', '.join(cameras)} matches none of the cameras found: {', '.join(readable)}")
    broken = [s for s in walk.sources if s.error is not None]
    for source in broken[:10]:
        lines.append(f"unreadable: {source.path}: {source.error}")
    if len(broken) > 10:
        lines.append(f"... and {len(broken) - 10} more unreadable")
    if walk.ignored:
        lines.append("ignored (unsupported): " + ", ".join(f"{s} ×{n}" for s, n in walk.ignored.most_common()))
    lines.append(f"supported: {SUPPORTED_INPUTS}")
    return "\n".join(lines)
