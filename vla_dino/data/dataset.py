"""`FrameDataset`: frames of many sources as one map-style torch dataset, and `collate_frames`.

Index space: source after source, every `stride`-th frame of each (frames 0, s, 2s, …), so near-
duplicate consecutive robot frames are thinned out. With `neighbor_offset = k > 0` each sample also
carries a frame of the same episode and camera drawn uniformly from [t−k, t+k] ∖ {t} (clipped to the
episode; the frame itself only for one-frame episodes), in original frame steps, not strided ones.
The draw is a pure function of (seed, epoch, index): index with `(index, epoch)` pairs (as the pretraining
sampler does) or call `set_epoch` each epoch for fresh pairs.

With `defer_jpeg=True`, image-folder frames that are plain JPEG files come back as the file's bytes (1-D uint8)
instead of decoded frames; `JpegBatchDecoder` decodes a batch of them in the main process, on the GPU if there is one.

Unreadable samples come back as None with the reason recorded. DataLoader workers hold copies of
the dataset, so the main process learns about their skips through the batch: `collate_frames`
puts them in `batch["skipped"]`, and `dataset.merge_skipped(batch)` adds them to the summary.
"""

from __future__ import annotations

import logging
import math
import os
import uuid
from collections import Counter
from typing import Any, Protocol

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from vla_dino.data.base import FrameReadError, FrameSource, square_resize
from vla_dino.data.discovery import NoFramesError, discover_sources
from vla_dino.data.frame_cache import FrameCache
from vla_dino.data.hdf5 import HDF5Reader
from vla_dino.data.images import ImageReader, read_jpeg_bytes
from vla_dino.data.lerobot import LeRobotReader
from vla_dino.data.videos import VideoReader

logger = logging.getLogger(__name__)

# Skips recorded and not yet handed to a batch: (process id, dataset token, file, reason). A forked
# worker inherits its parent's entries; the pid keeps them from being reported twice.
_PENDING_SKIPS: list[tuple[int, str, str, str]] = []
# Readers a forked worker inherited from its parent: kept referenced and never touched, because
# freeing FFmpeg decoder threads or HDF5 handles that belong to the parent deadlocks the child.
_INHERITED_READERS: list[dict[str, "_Reader"]] = []


class _Reader(Protocol):
    def read(self, source: FrameSource, index: int, min_side: int | None = None) -> np.ndarray: ...

    def close(self) -> None: ...


def _new_readers() -> dict[str, _Reader]:
    return {"images": ImageReader(), "video": VideoReader(), "hdf5": HDF5Reader(), "lerobot": LeRobotReader()}


class FrameDataset(Dataset):
    """Square uint8 RGB frames (3, frame_size, frame_size) from `discover_sources` output.

    Each frame: the centre square of side min(H, W), resized to `frame_size` (equivalently, shorter
    side to `frame_size`, then centre crop). Files are opened lazily in the process that reads them.

    A sample: {"frame": uint8 (3, S, S), "source": str, "index": int (dataset index),
    "frame_index": int (in its episode), "episode": str, "camera": str}, plus "neighbor" (uint8
    (3, S, S)) and "neighbor_frame_index" when `neighbor_offset > 0`; None when unreadable. With `defer_jpeg`,
    "frame"/"neighbor" of a plain JPEG file are its bytes (see `read_frame`).
    """

    def __init__(
        self,
        sources: list[FrameSource],
        frame_size: int = 256,
        stride: int = 1,
        neighbor_offset: int = 0,
        seed: int = 0,
        min_frame_side: int = 1,
        defer_jpeg: bool = False,
        frame_cache: FrameCache | None = None,
    ) -> None:
        if frame_size < 1:
            raise ValueError(f"frame_size={frame_size}; expected a positive number of pixels")
        if stride < 1:
            raise ValueError(f"stride={stride}; expected ≥ 1 (1 keeps every frame)")
        if neighbor_offset < 0:
            raise ValueError(f"neighbor_offset={neighbor_offset}; expected ≥ 0 (0 disables temporal neighbours)")
        self.frame_size, self.stride, self.neighbor_offset, self.seed = frame_size, stride, neighbor_offset, seed
        # Frames with a shorter side below this are skipped, not enlarged (a 5×5 thumbnail
        # blown up to 256² is noise, not a robot frame).
        self.min_frame_side = min_frame_side
        self.defer_jpeg = defer_jpeg
        self.frame_cache = frame_cache  # sources it has built are read from it, not decoded
        self.sources = [s for s in sources if s.error is None and s.num_frames > 0]
        self.unreadable_sources = [s for s in sources if s.error is not None]
        if not self.sources:
            reasons = "; ".join(f"{s.path}: {s.error}" for s in self.unreadable_sources[:5])
            raise NoFramesError(f"FrameDataset got {len(sources)} source(s) and none readable. {reasons}")
        kept_per_source = [math.ceil(s.num_frames / stride) for s in self.sources]
        self._ends = np.cumsum(kept_per_source)
        self.epoch = 0
        self._token = uuid.uuid4().hex  # tells this dataset's skips apart from another's in one process
        self._skipped: Counter[tuple[str, str]] = Counter()
        self._new_skips: list[tuple[str, str]] = []  # since the last drain_new_skips()
        self._readers: dict[str, _Reader] | None = None
        self._reader_pid: int | None = None

    # ---------------------------------------------------------------- indexing
    def __len__(self) -> int:
        return int(self._ends[-1])

    def set_epoch(self, epoch: int) -> None:
        """The epoch of the neighbour draw for plain integer indices (an `(index, epoch)` key carries its own)."""
        self.epoch = epoch

    def locate(self, index: int) -> tuple[FrameSource, int]:
        """Dataset index → (source, frame number in its episode)."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} frames")
        index %= len(self)
        position = int(np.searchsorted(self._ends, index, side="right"))
        start = int(self._ends[position - 1]) if position else 0
        return self.sources[position], (index - start) * self.stride

    def neighbor_frame(self, index: int, epoch: int | None = None) -> int:
        """The temporal neighbour's frame number for `index` at `epoch` (default: `set_epoch`'s)."""
        source, frame = self.locate(index)
        low, high = max(0, frame - self.neighbor_offset), min(source.num_frames - 1, frame + self.neighbor_offset)
        candidates = [t for t in range(low, high + 1) if t != frame] or [frame]
        epoch = self.epoch if epoch is None else epoch
        rng = np.random.default_rng((self.seed, epoch, index % len(self)))
        return candidates[int(rng.integers(len(candidates)))]

    # ---------------------------------------------------------------- reading
    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any] | None:
        """`key`: a dataset index, or an `(index, epoch)` pair (`ResumableBatchSampler.batches`), whose epoch
        decides the neighbour draw without `set_epoch`: workers that live across epochs need no new copy."""
        index, epoch = key if isinstance(key, tuple) else (key, None)
        source, frame = self.locate(index)
        reading = frame
        try:
            sample: dict[str, Any] = {"frame": self.read_frame(source, frame)}
            if self.neighbor_offset > 0:
                reading = self.neighbor_frame(index, epoch)
                sample["neighbor"] = self.read_frame(source, reading)
                sample["neighbor_frame_index"] = reading
        except Exception as error:  # any decode failure skips the sample; the reason is kept
            self._record_skip(source, reading, error)
            return None
        sample.update(source=source.name, index=index % len(self), frame_index=frame, episode=source.episode, camera=source.camera)
        return sample

    def read_frame(self, source: FrameSource, frame: int) -> torch.Tensor:
        """One frame as uint8 (3, S, S), from the `frame_cache` when it holds the source; with `defer_jpeg`, a plain
        JPEG file's bytes (1-D uint8) for `JpegBatchDecoder` (files its check turns down are decoded here, which
        also says why one is unreadable)."""
        if self.frame_cache is not None:
            cached = self.frame_cache.read(source, frame)
            if cached is not None:
                return cached
        if self.defer_jpeg and source.kind == "images":
            encoded = read_jpeg_bytes(source.files[frame], self.min_frame_side)
            if encoded is not None:
                return encoded
        return self.decode_frame(source, frame)

    def decode_frame(self, source: FrameSource, frame: int) -> torch.Tensor:
        """One frame decoded in this process, as uint8 (3, S, S)."""
        image = self._reader_for(source.kind).read(source, frame, min_side=self.frame_size)
        if min(image.shape[:2]) < self.min_frame_side:
            height, width = image.shape[:2]
            raise FrameReadError(
                f"{width}×{height} frame, smaller than min_frame_side={self.min_frame_side}: too small to enlarge to "
                f"{self.frame_size}×{self.frame_size}"
            )
        return torch.from_numpy(square_resize(image, self.frame_size)).permute(2, 0, 1).contiguous()

    def _reader_for(self, kind: str) -> _Reader:
        # A forked worker must not reuse handles opened by its parent (h5py and FFmpeg state is not
        # fork-safe); the parent's are left alone, new ones are opened here.
        if self._readers is None or self._reader_pid != os.getpid():
            if self._readers is not None:
                _INHERITED_READERS.append(self._readers)
            if get_worker_info() is not None:
                cv2.setNumThreads(1)  # workers are the parallelism (torch does the same for its threads)
            self._readers, self._reader_pid = _new_readers(), os.getpid()
        return self._readers[kind]

    def close(self) -> None:
        """Closes the files opened by this process."""
        if self._readers is not None and self._reader_pid == os.getpid():
            for reader in self._readers.values():
                reader.close()
        self._readers = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_readers"], state["_reader_pid"] = None, None  # open files never travel to workers
        return state

    # ---------------------------------------------------------------- skipped samples
    def skip_record(self, source: FrameSource, frame: int, error: Exception) -> tuple[str, str, str]:
        """(dataset token, file, reason): an entry of `batch["skipped"]`."""
        file = str(source.files[frame]) if source.kind == "images" and frame < len(source.files) else str(source.path)
        reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        return self._token, file, reason

    def _record_skip(self, source: FrameSource, frame: int, error: Exception) -> None:
        _PENDING_SKIPS.append((os.getpid(), *self.skip_record(source, frame, error)))

    def merge_skipped(self, batch: dict[str, Any]) -> int:
        """Counts the skips a batch reports (from any worker); returns how many were this dataset's."""
        mine = [(file, reason) for token, file, reason in batch.get("skipped", []) if token == self._token]
        self._skipped.update(mine)
        self._new_skips += mine
        return len(mine)

    def drain_new_skips(self) -> list[tuple[str, str]]:
        """(file, reason) of every skip merged or read in this process since the previous call."""
        self._drain_own_pending()
        new, self._new_skips = self._new_skips, []
        return new

    def _drain_own_pending(self) -> None:
        pid = os.getpid()
        mine = [entry for entry in _PENDING_SKIPS if entry[:2] == (pid, self._token)]
        _PENDING_SKIPS[:] = [entry for entry in _PENDING_SKIPS if entry[:2] != (pid, self._token)]
        records = [(file, reason) for _, _, file, reason in mine]
        self._skipped.update(records)
        self._new_skips += records

    def skipped_counts(self) -> dict[str, int]:
        """Skipped samples per file (merged batches, reads in this process, unreadable files as 1 each)."""
        self._drain_own_pending()
        counts: Counter[str] = Counter()
        for (file, _), n in self._skipped.items():
            counts[file] += n
        for source in self.unreadable_sources:
            counts[str(source.path)] += 1
        return dict(counts)

    def skipped_summary(self) -> str:
        """Readable summary: totals, then each file with its count and first reason."""
        self._drain_own_pending()
        if not self._skipped and not self.unreadable_sources:
            return "skipped: nothing"
        lines = [
            f"skipped: {sum(self._skipped.values())} sample(s) in {len({f for f, _ in self._skipped})} file(s); "
            f"{len(self.unreadable_sources)} unreadable file(s) left out entirely"
        ]
        for source in self.unreadable_sources:
            lines.append(f"  {source.path}: unreadable file: {source.error}")
        by_file: dict[str, tuple[int, str]] = {}
        for (file, reason), n in self._skipped.most_common():
            count, first = by_file.get(file, (0, reason))
            by_file[file] = (count + n, first)
        for file, (count, reason) in sorted(by_file.items(), key=lambda item: -item[1][0]):
            lines.append(f"  {file}: {count} sample(s) skipped ({reason})")
        return "\n".join(lines)


def collate_frames(samples: list[dict[str, Any] | None]) -> dict[str, Any]:
    """Stacks the readable samples; None entries are dropped and counted in `num_skipped`.

    `skipped` carries the reasons recorded in this process (a worker's) since its last batch, for
    `FrameDataset.merge_skipped`. If every sample was skipped, `frame` is an empty (0, 3, 0, 0) tensor.
    With deferred JPEG bytes among the rows (`defer_jpeg`), `frame`/`neighbor` are lists until
    `JpegBatchDecoder` decodes them.
    """
    kept = [s for s in samples if s is not None]
    pid = os.getpid()
    skipped = [(token, file, reason) for owner, token, file, reason in _PENDING_SKIPS if owner == pid]
    _PENDING_SKIPS.clear()  # entries of another pid are a forked parent's, reported by the parent
    batch: dict[str, Any] = {
        "frame": _stack_frames([s["frame"] for s in kept]) if kept else torch.empty(0, 3, 0, 0, dtype=torch.uint8),
        "index": torch.tensor([s["index"] for s in kept], dtype=torch.long),
        "frame_index": torch.tensor([s["frame_index"] for s in kept], dtype=torch.long),
        "source": [s["source"] for s in kept],
        "num_skipped": len(samples) - len(kept),
        "skipped": skipped,
    }
    if kept and "neighbor" in kept[0]:
        batch["neighbor"] = _stack_frames([s["neighbor"] for s in kept])
        batch["neighbor_frame_index"] = torch.tensor([s["neighbor_frame_index"] for s in kept], dtype=torch.long)
    return batch


def _stack_frames(frames: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
    if all(frame.ndim == 3 for frame in frames):
        return torch.stack(frames)
    # JPEG bytes (1-D, of different lengths) stay apart until JpegBatchDecoder, as views of one buffer: a worker
    # then sends one shared-memory block, not one per row (2.5× the batches/s at 64 rows)
    encoded = [row for row, frame in enumerate(frames) if frame.ndim == 1]
    views = torch.cat([frames[row] for row in encoded]).split([frames[row].numel() for row in encoded])
    rows = list(frames)
    for row, view in zip(encoded, views):
        rows[row] = view
    return rows


def load_frame_tensor(paths: str | os.PathLike | list[str | os.PathLike], frame_size: int, num_frames: int | None = None,
                      cameras: list[str] | None = None) -> torch.Tensor:
    """The readable frames found under ``paths`` as one uint8 (N, 3, frame_size, frame_size) tensor: all of them, or
    ``num_frames`` spread evenly over everything found. Unreadable frames are left out with a warning that names them."""
    dataset = FrameDataset(discover_sources(paths, cameras), frame_size=frame_size)
    count = len(dataset) if num_frames is None else min(num_frames, len(dataset))
    chosen = np.unique(np.linspace(0, len(dataset) - 1, count).round().astype(int))
    samples = [dataset[int(index)] for index in chosen]
    frames = [sample["frame"] for sample in samples if sample is not None]
    if not frames:
        raise RuntimeError(f"none of the chosen frames could be read:\n{dataset.skipped_summary()}")
    if len(frames) < len(chosen):
        logger.warning("%d of %d frames unreadable:\n%s", len(chosen) - len(frames), len(chosen), dataset.skipped_summary())
    return torch.stack(frames)
