"""Shared tiny checkpoints for the runtime tests (random-init LeRobot ACT saved in checkpoint layout)."""

from pathlib import Path

import pytest

from vla_dino.runtime.random_checkpoint import TINY_ACT, write_random_checkpoint
from vla_dino.runtime.runtime import PolicyRuntime, RuntimeConfig

CAMERAS = {"front": (32, 32), "wrist": (24, 32)}


@pytest.fixture(scope="session")
def act_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<run>/checkpoints/000010/pretrained_model`` with a tiny ACT (two cameras, state 4, action 3, chunk 8)."""
    folder = tmp_path_factory.mktemp("run") / "checkpoints" / "000010" / "pretrained_model"
    return write_random_checkpoint(folder, "act", cameras=CAMERAS, state_dim=4, action_dim=3, **TINY_ACT)


@pytest.fixture(scope="session")
def act_runtime(act_checkpoint: Path) -> PolicyRuntime:
    return PolicyRuntime.from_pretrained(act_checkpoint, RuntimeConfig(device="cpu", dtype="fp32", warmup_iters=2))
