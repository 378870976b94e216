"""Atomic, rotating checkpoints and the RNG state that makes a resumed run exact.

A checkpoint is one `torch.save` file of tensors and plain python types only, so it loads
with `torch.load(weights_only=True)`. It is written to `<name>.tmp` and moved into place
with `os.replace` (atomic on POSIX): a crash mid-write never leaves a truncated checkpoint.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

_NAME = re.compile(r"^step_(\d+)\.pt$")


class CheckpointManager:
    """`<directory>/step_<N>.pt`, keeping the newest `keep_last`."""

    def __init__(self, directory: str | Path, keep_last: int) -> None:
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        self.directory = Path(directory)
        self.keep_last = keep_last

    def path_for(self, step: int) -> Path:
        return self.directory / f"step_{step:08d}.pt"

    def save(self, state: dict[str, Any], step: int) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path_for(step)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
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

    def _rotate(self) -> None:
        for _, path in self.checkpoints()[: -self.keep_last]:
            path.unlink(missing_ok=True)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or "step" not in state or "model" not in state:
        raise ValueError(f"{path} is not a vla_dino pretraining checkpoint (no 'step'/'model' entries)")
    return state


def resolve_checkpoint(source: str | Path) -> Path:
    """A checkpoint file, or a run / checkpoints folder → its latest checkpoint."""
    source = Path(source)
    if source.is_file():
        return source
    for directory in (source / "checkpoints", source):
        latest = CheckpointManager(directory, keep_last=1).latest()
        if latest is not None:
            return latest
    raise FileNotFoundError(f"no checkpoint at {source} (looked for {source}/checkpoints/step_*.pt and {source}/step_*.pt)")


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
