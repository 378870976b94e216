"""Start-up scan of discovered sources: what is readable, what is not, and a report that says so.

`scan_sources` opens the header of every image file (Pillow reads the first bytes only; the
files are checked on a thread pool, since on network filesystems this is latency-bound), so files
that are not images (empty, garbage, wrong suffix) and frames too small to train on are counted
and left out *before* training rather than discovered batch by batch. Files whose header is fine
but whose data is truncated are still found only when read (the dataset skips them then).
Videos, HDF5 and LeRobot sources were already opened by discovery; their frame sizes are
checked when read (`FrameDataset(min_frame_side=...)`).

`ScanResult.report()` is the start-up table: per `--frames` path, kind and camera, the readable
episodes and frames and the unreadable files, then the first unreadable files with reasons.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from PIL import Image

from vla_dino.data.base import FrameSource

_MAX_LISTED = 10
_THREADS = 16


@dataclass
class SourceRow:
    """One line of the report: a (path given, kind, camera) group."""

    root: str
    kind: str
    camera: str
    episodes: int = 0
    frames: int = 0
    unreadable_files: int = 0


@dataclass
class ScanResult:
    sources: list[FrameSource]  # readable sources; image lists hold only files whose header opened
    unreadable: list[tuple[str, str]]  # (file, reason): files and sources left out entirely
    rows: list[SourceRow]
    upscaled: int = 0  # image frames smaller than frame_size (enlarged by the resize)
    smallest: tuple[int, int] | None = None  # (width, height) of the smallest image frame
    frame_size: int = 0
    unreadable_sources: list[FrameSource] = field(default_factory=list)

    @property
    def readable_frames(self) -> int:
        return sum(s.num_frames for s in self.sources)

    def frames_after_stride(self, stride: int) -> int:
        return sum(math.ceil(s.num_frames / stride) for s in self.sources)

    def report(self, stride: int = 1) -> str:
        lines = [
            f"frames: {self.readable_frames} readable in {len(self.sources)} episode-camera source(s)"
            + (f" ({self.frames_after_stride(stride)} after stride {stride})" if stride > 1 else "")
            + f", {len(self.unreadable)} unreadable file(s) left out"
        ]
        width = max((len(r.root) for r in self.rows), default=0)
        for row in self.rows:
            bad = f", {row.unreadable_files} unreadable file(s)" if row.unreadable_files else ""
            lines.append(
                f"  {row.root:<{width}}  {row.kind:<7} camera {row.camera or '?'}: "
                f"{row.episodes} episode(s), {row.frames} frame(s){bad}"
            )
        for file, reason in self.unreadable[:_MAX_LISTED]:
            lines.append(f"  unreadable: {file}: {reason}")
        if len(self.unreadable) > _MAX_LISTED:
            lines.append(f"  … and {len(self.unreadable) - _MAX_LISTED} more unreadable (all in skipped_samples.txt)")
        if self.upscaled:
            w, h = self.smallest or (0, 0)
            lines.append(
                f"  warning: {self.upscaled} image frame(s) smaller than data.frame_size={self.frame_size} "
                f"(smallest {w}×{h}) are enlarged to {self.frame_size}×{self.frame_size}"
            )
        return "\n".join(lines)


def _header(path: Path) -> tuple[int, int] | str:
    """(width, height), or the reason the file is not an image."""
    try:
        with Image.open(path) as image:
            return image.size
    except Exception as error:  # Pillow raises UnidentifiedImageError, OSError, SyntaxError, …
        text = str(error).splitlines()[0] if str(error) else ""
        return f"not a readable image ({type(error).__name__}: {text})"


def _root_of(path: Path, roots: list[tuple[Path, str]]) -> str:
    """The first given path holding `path`: discovery walks them in order and keeps a source
    reached twice under the first one."""
    resolved = path.resolve()
    for root, name in roots:
        if resolved == root or root in resolved.parents:
            return name
    return str(path)


def scan_sources(
    sources: Sequence[FrameSource],
    paths: Sequence[str | Path] = (),
    frame_size: int = 0,
    min_frame_side: int = 1,
    check_files: bool = True,
) -> ScanResult:
    """Checks image headers (when `check_files`) and sizes; groups sources under the given paths."""
    roots = [(Path(p).expanduser().resolve(), str(p)) for p in paths]
    image_files = sorted({f for s in sources if s.kind == "images" and s.error is None for f in s.files}) if check_files else []
    with ThreadPoolExecutor(max_workers=_THREADS) as pool:
        headers = dict(zip(image_files, pool.map(_header, image_files)))

    kept: list[FrameSource] = []
    unreadable: list[tuple[str, str]] = []
    unreadable_sources: list[FrameSource] = []
    rows: dict[tuple[str, str, str], SourceRow] = {}
    episodes: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    upscaled, smallest = 0, None

    def row(source: FrameSource) -> SourceRow:
        key = (_root_of(source.path, roots), source.kind, source.camera)
        return rows.setdefault(key, SourceRow(*key))

    for source in sources:
        if source.error is not None or source.num_frames == 0:
            unreadable.append((str(source.path), source.error or "no frames"))
            unreadable_sources.append(source)
            row(source).unreadable_files += 1
            continue
        if source.kind == "images" and check_files:
            good = []
            for file in source.files:
                header = headers[file]
                if isinstance(header, str):
                    unreadable.append((str(file), header))
                    row(source).unreadable_files += 1
                    continue
                width, height = header
                if min(width, height) < min_frame_side:
                    unreadable.append((str(file), (
                        f"{width}×{height} image, smaller than data.min_frame_side={min_frame_side}: too small to "
                        f"enlarge to {frame_size}×{frame_size} (lower data.min_frame_side to train on it)")))
                    row(source).unreadable_files += 1
                    continue
                if min(width, height) < frame_size:
                    upscaled += 1
                    if smallest is None or min(width, height) < min(smallest):
                        smallest = (width, height)
                good.append(file)
            if not good:
                continue
            if len(good) != len(source.files):
                source = dataclasses.replace(source, files=tuple(good), num_frames=len(good))
        kept.append(source)
        r = row(source)
        r.frames += source.num_frames
        episodes[(r.root, r.kind, r.camera)].add(source.episode)
    for key, r in rows.items():
        r.episodes = len(episodes.get(key, ()))
    return ScanResult(kept, unreadable, list(rows.values()), upscaled, smallest, frame_size, unreadable_sources)
