"""Atomic, rotating, verified checkpoints and the RNG state that makes a resumed run exact.

A checkpoint is one `torch.save` file of tensors and plain python types only, so it loads
with `torch.load(weights_only=True)`. It is written to `<name>.tmp` and moved into place
with `os.replace` (atomic on POSIX): a crash mid-write never leaves a truncated checkpoint.
After the payload is in place a manifest `<name>.sha256.json` (size and SHA-256 of the payload,
hashed while it was written) is written the same way. Loading checks the manifest first, so a
file damaged later (a full disk, a copy cut short, a bad sector) is named as such instead of
surfacing as a torch unpickling error; `load_latest` then moves it aside and takes the previous one.
Checkpoints without a manifest (older versions, or a kill between payload and manifest) still
load when torch can read them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from vla_dino.pretrain.errors import CheckpointDamagedError, CheckpointMissingError, CheckpointWriteError, ResumeError

log = logging.getLogger("vla_dino.pretrain")

_NAME = re.compile(r"^step_(\d+)\.pt$")
MANIFEST_SUFFIX = ".sha256.json"
DAMAGED_DIR = "damaged"


def manifest_path(path: Path) -> Path:
    return path.with_name(path.name + MANIFEST_SUFFIX)


class _HashingWriter:
    """A write-only file wrapper that hashes what passes through (no second read of the file)."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle, self.sha256, self.size = handle, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.handle.write(data)

    def flush(self) -> None:
        self.handle.flush()


def _fsync_dir(directory: Path) -> None:
    """Makes the renames durable (a power loss right after os.replace can otherwise undo it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # not supported on this filesystem / platform
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class CheckpointManager:
    """`<directory>/step_<N>.pt` (+ manifest), keeping the newest `keep_last`."""

    def __init__(self, directory: str | Path, keep_last: int) -> None:
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        self.directory = Path(directory)
        self.keep_last = keep_last

    def path_for(self, step: int) -> Path:
        return self.directory / f"step_{step:08d}.pt"

    def save(self, state: dict[str, Any], step: int) -> Path:
        """Payload, then manifest, then rotation: an older checkpoint is deleted only once the new
        one is complete. Write failures leave no partial files and raise CheckpointWriteError."""
        path = self.path_for(step)
        tmp = path.with_name(path.name + ".tmp")
        manifest, manifest_tmp = manifest_path(path), manifest_path(path).with_name(manifest_path(path).name + ".tmp")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as handle:
                writer = _HashingWriter(handle)
                torch.save(state, writer)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
            record = {"file": path.name, "bytes": writer.size, "sha256": writer.sha256.hexdigest(), "step": step}
            with open(manifest_tmp, "w") as handle:
                json.dump(record, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(manifest_tmp, manifest)
            _fsync_dir(self.directory)
        except OSError as error:
            for leftover in (tmp, manifest_tmp):
                leftover.unlink(missing_ok=True)
            raise CheckpointWriteError(
                f"could not write checkpoint {path} ({type(error).__name__}: {error}); the previous checkpoints "
                f"are intact: {', '.join(p.name for _, p in self.checkpoints() if p != path) or 'none'}"
            ) from error
        self._rotate()
        return path

    def checkpoints(self) -> list[tuple[int, Path]]:
        """(step, path), oldest first; `.tmp` leftovers of an interrupted write are ignored."""
        if not self.directory.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.directory.iterdir() if (m := _NAME.match(p.name))]
        return sorted(found)

    def latest(self) -> Path | None:
        found = self.checkpoints()
        return found[-1][1] if found else None

    def move_aside(self, path: Path, reason: str) -> Path:
        """Moves a damaged checkpoint (and its manifest) to `<directory>/damaged/`, out of rotation
        and out of `latest()`, with the reason next to it; returns the new path."""
        target_dir = self.directory / DAMAGED_DIR
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / path.name
        shutil.move(str(path), str(target))
        if manifest_path(path).exists():
            shutil.move(str(manifest_path(path)), str(manifest_path(target)))
        target.with_name(target.name + ".reason.txt").write_text(reason + "\n")
        return target

    def _rotate(self) -> None:
        for _, path in self.checkpoints()[: -self.keep_last]:
            path.unlink(missing_ok=True)
            manifest_path(path).unlink(missing_ok=True)


def damage_reason(path: str | Path) -> str | None:
    """Why `path` is not a complete checkpoint by its manifest (None: it matches, or has none)."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        return "empty file (0 bytes)"
    manifest = manifest_path(path)
    if not manifest.is_file():
        return None
    try:
        record = json.loads(manifest.read_text())
        expected_size, expected_sha = int(record["bytes"]), str(record["sha256"])
    except (ValueError, KeyError, TypeError) as error:
        return f"its manifest {manifest.name} is unreadable ({type(error).__name__})"
    if size != expected_size:
        return f"truncated or overwritten: {size} bytes, its manifest says {expected_size}"
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 24), b""):
            digest.update(chunk)
    if digest.hexdigest() != expected_sha:
        return f"SHA-256 mismatch with its manifest ({digest.hexdigest()[:12]}… vs {expected_sha[:12]}…): the file is corrupted"
    return None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A verified checkpoint; CheckpointDamagedError names the file and what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointMissingError(f"checkpoint not found: {path}")
    reason = damage_reason(path)
    if reason is not None:
        raise CheckpointDamagedError(f"checkpoint {path} is damaged: {reason}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises EOFError, RuntimeError, UnpicklingError, … for bad files
        first_line = str(error).splitlines()[0] if str(error) else ""
        raise CheckpointDamagedError(f"checkpoint {path} cannot be read ({type(error).__name__}: {first_line})") from error
    if not isinstance(state, dict) or "step" not in state or "model" not in state:
        raise CheckpointDamagedError(f"{path} is not a vla_dino pretraining checkpoint (no 'step'/'model' entries)")
    return state


def load_latest(
    manager: CheckpointManager, map_location: str | torch.device = "cpu", move_aside: bool = True
) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that loads, newest first; damaged ones are logged by name and (when
    `move_aside`, i.e. on the one process that owns the folder) moved to `damaged/`.
    None when there is no checkpoint at all; ResumeError when every one is damaged."""
    damaged: list[str] = []
    for _, path in reversed(manager.checkpoints()):
        try:
            return path, load_checkpoint(path, map_location)
        except (CheckpointDamagedError, CheckpointMissingError) as error:
            # Missing: another process moved it aside between listing and reading.
            message = str(error)
            damaged.append(message)
            if move_aside and path.exists():
                target = manager.move_aside(path, message)
                log.warning("%s; moved it to %s and trying the previous checkpoint", message, target)
            else:
                log.warning("%s; trying the previous checkpoint", message)
    if damaged:
        raise ResumeError(
            f"no loadable checkpoint in {manager.directory}: " + "; ".join(damaged)
            + ". Start a new run in another --output-dir, or pass --resume with a good checkpoint file."
        )
    return None


def resolve_checkpoint(source: str | Path) -> Path:
    """A checkpoint file, or a run / checkpoints folder → its latest checkpoint."""
    source = Path(source)
    if source.is_file():
        return source
    for directory in (source / "checkpoints", source):
        latest = CheckpointManager(directory, keep_last=1).latest()
        if latest is not None:
            return latest
    raise CheckpointMissingError(
        f"no checkpoint at {source} (looked for {source}/checkpoints/step_*.pt and {source}/step_*.pt)"
    )


def checkpoint_folder(source: str | Path) -> Path | None:
    """The folder of step_*.pt files that `source` (a run or checkpoints folder) names, if any."""
    source = Path(source)
    if source.is_file():
        return None
    for directory in (source / "checkpoints", source):
        if CheckpointManager(directory, keep_last=1).latest() is not None:
            return directory
    return None


# ------------------------------------------------------------------ RNG state
def capture_rng_state() -> dict[str, Any]:
    """torch (CPU and every CUDA device), numpy and python RNG states as tensors / plain types."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "name": str(np_name),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "python": {"version": int(py_version), "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"]:
        if not torch.cuda.is_available():
            raise RuntimeError("checkpoint holds CUDA RNG states but CUDA is not available")
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
