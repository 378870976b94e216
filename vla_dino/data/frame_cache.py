"""Decoded-frame cache: every source decoded once, in order, into a uint8 array on disk (`data.frame_cache`).

Pretraining visits each frame once per epoch for many epochs, and each visit decodes it again. For videos that
is the slow part: reading frame i decodes from the keyframe before it, so with a camera's or ffmpeg's default
keyframe interval (libx264: 250) a random read decodes up to 249 frames, where reading in order decodes one
(`bench_pretrain_throughput.py`'s video rows, 640×480 → 64², one worker: 32.5 random reads/s against 610 frames/s
decoded in order at interval 250). The cache decodes
each source front to back once, through `FrameDataset.decode_frame` (the same decode and resize as the workers',
so cached frames are the uncached ones, bit for bit), into `<folder>/<fingerprint>.npy` (frames, 3, S, S); the
workers then read memory-mapped frames. Disk: 3·S² bytes a frame (196 KiB at S = 256).

A source's fingerprint covers what its frames depend on: kind, path, key, frame count, frame_size, min_frame_side
and the size and modification time of its file(s) (a LeRobot dataset: `meta/info.json`), so an edited source is
decoded again and an unchanged one is reused across runs (the old entry stays: delete the folder to reclaim it;
several datasets may share one folder). Frames that fail to decode are marked in
`<fingerprint>.ok.npy` and skipped (and counted) when read, as without the cache. Files are written under
temporary names and renamed, the frames last, so a killed build leaves nothing that a later run would trust.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
from collections import OrderedDict
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vla_dino.data.base import FrameReadError, FrameSource

logger = logging.getLogger(__name__)

_VERSION = 1  # bump when the decode or the file layout changes
_MAX_OPEN_FILES = 64  # memory maps kept open per process (thousands of episodes would exhaust file descriptors)


@dataclass
class CacheBuild:
    """What `FrameCache.build` did: sources decoded now, sources already cached, frames that failed to decode."""

    built: int = 0
    reused: int = 0
    frames: int = 0
    failed_frames: int = 0
    bytes: int = 0

    def summary(self, folder: Path) -> str:
        return (f"frame cache {folder}: {self.built} source(s) decoded now, {self.reused} reused, {self.frames} frames "
                f"({self.bytes / 2**30:.2f} GiB), {self.failed_frames} frame(s) failed to decode (skipped when read)")


class FrameCache:
    """Decoded frames of `FrameDataset` sources at one `frame_size`, on disk under `folder`."""

    def __init__(self, folder: str | os.PathLike, frame_size: int, min_frame_side: int = 1) -> None:
        self.folder = Path(folder)
        self.frame_size, self.min_frame_side = frame_size, min_frame_side
        self._open: OrderedDict[Path, tuple[np.ndarray, np.ndarray]] = OrderedDict()  # this process's memory maps
        self._open_pid: int | None = None
        self._files: dict[tuple, Path] = {}  # source identity → its cache file (after `build`)

    # ---------------------------------------------------------------- naming
    def file_for(self, source: FrameSource) -> Path:
        """`<folder>/<fingerprint>.npy`: the fingerprint changes when the source or its decoding would."""
        digest = hashlib.sha256(
            f"v{_VERSION}|{source.kind}|{source.path.resolve()}|{source.key}|{source.offset}|{source.num_frames}|"
            f"{self.frame_size}|{self.min_frame_side}".encode()
        )
        for file in _files_behind(source):
            stat = file.stat()
            digest.update(f"|{file.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        return self.folder / f"{digest.hexdigest()[:32]}.npy"

    @staticmethod
    def _ok_file(file: Path) -> Path:
        return file.with_suffix(".ok.npy")

    # ---------------------------------------------------------------- building
    def build(self, sources: list[FrameSource], workers: int = 1, progress: bool = True,
              shard: tuple[int, int] = (0, 1)) -> CacheBuild:
        """Decode every source not cached yet (`workers` processes, one source each at a time) and register all
        of them for `read`. `shard`: (rank, world) decodes only the uncached ones among every world-th source (the
        ranks share the folder; after a barrier, `missing` says whether another rank left one out)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        report = CacheBuild()
        rank, world = shard
        mine = []  # every world-th source, whether cached or not: the ranks' shares do not depend on timing
        for position, source in enumerate(sources):
            file = self.file_for(source)
            self._files[_identity(source)] = file
            if file.is_file():
                report.reused += 1
                report.frames += source.num_frames
                report.bytes += file.stat().st_size
            elif position % world == rank:
                mine.append((source, file))
        bar = tqdm(total=sum(s.num_frames for s, _ in mine), unit="frame", desc="decoding into the frame cache",
                   disable=not (progress and mine))
        if len(mine) > 1 and workers > 1:  # spawned: no fork of a process holding threads (tqdm, gloo)
            pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
        else:
            pool = _InProcess()
        with pool:
            futures = [pool.submit(_decode_source, source, file, self.frame_size, self.min_frame_side) for source, file in mine]
            for future in as_completed(futures):
                frames, failed, size = future.result()
                report.built += 1
                report.frames += frames
                report.failed_frames += failed
                report.bytes += size
                bar.update(frames)
        bar.close()
        return report

    def missing(self, sources: list[FrameSource]) -> list[FrameSource]:
        """The sources whose cache file is not on disk (after `build`: ones another rank failed to write). Uses the
        paths `build` registered, so the source files are not fingerprinted (stat'ed) a second time."""
        return [source for source in sources if not (self._files.get(_identity(source)) or self.file_for(source)).is_file()]

    # ---------------------------------------------------------------- reading
    def read(self, source: FrameSource, frame: int) -> torch.Tensor | None:
        """Frame `frame` of `source` as uint8 (3, S, S), or None when the source is not in the cache;
        FrameReadError when the frame failed to decode at build time."""
        file = self._files.get(_identity(source))
        if file is None:
            return None
        if self._open_pid != os.getpid():  # memory maps are opened by the process that reads
            self._open, self._open_pid = OrderedDict(), os.getpid()
        entry = self._open.pop(file, None)
        if entry is None:
            entry = (np.load(file, mmap_mode="r"), np.load(self._ok_file(file)))
        self._open[file] = entry  # most recently used last; each map holds a file descriptor
        while len(self._open) > _MAX_OPEN_FILES:
            self._open.popitem(last=False)
        frames, ok = entry
        if not ok[frame]:
            raise FrameReadError(f"frame {frame} failed to decode when the frame cache {file} was built")
        return torch.from_numpy(np.array(frames[frame]))

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_open"], state["_open_pid"] = OrderedDict(), None  # memory maps are not pickled to workers
        return state


def _decode_source(source: FrameSource, file: Path, frame_size: int, min_frame_side: int) -> tuple[int, int, int]:
    """Decode `source` in order into `file` (temporary names, renamed when complete); (frames, failed, bytes)."""
    from vla_dino.data.dataset import FrameDataset  # the workers' own decode path (imported here: no cycle)

    dataset = FrameDataset([source], frame_size=frame_size, min_frame_side=min_frame_side)
    temporary = file.with_name(f".{file.stem}.{os.getpid()}.tmp.npy")
    temporary_ok = file.with_name(f".{file.stem}.{os.getpid()}.ok.tmp.npy")
    frames = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.uint8, shape=(source.num_frames, 3, frame_size, frame_size))
    ok = np.ones(source.num_frames, dtype=bool)
    try:
        for index in range(source.num_frames):
            try:
                frames[index] = dataset.decode_frame(source, index).numpy()
            except Exception as error:  # kept as a hole, skipped when read, as an unreadable frame is without the cache
                ok[index] = False
                logger.warning("%s frame %d: %s (left out of the frame cache)", source.name, index, error)
        frames.flush()
        del frames
        np.save(temporary_ok, ok)
        os.replace(temporary_ok, FrameCache._ok_file(file))
        os.replace(temporary, file)  # last: the frames file's presence means the entry is complete
    finally:
        dataset.close()
        for leftover in (temporary, temporary_ok):
            leftover.unlink(missing_ok=True)
    return source.num_frames, int((~ok).sum()), file.stat().st_size


def _files_behind(source: FrameSource) -> list[Path]:
    if source.kind == "images":
        return list(source.files)
    if source.kind == "lerobot":
        return [source.path / "meta" / "info.json"]
    return [source.path]  # a video or HDF5 file


def _identity(source: FrameSource) -> tuple:
    return (source.kind, str(source.path), source.key, source.offset, source.episode, source.camera)


class _InProcess:
    """`ProcessPoolExecutor`'s submit in this process (one source, or one worker: no pool to start)."""

    def __enter__(self) -> "_InProcess":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        future.set_result(fn(*args))
        return future
