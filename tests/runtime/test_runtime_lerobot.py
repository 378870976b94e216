"""Our plugin policy types (policies/, `lerobot_policy_vla_dino`) through the runtime and through `lerobot-rollout`."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vla_dino.adapter import VisionTokenizerConfig
from vla_dino.runtime.loading import lerobot_predict_chunk, load_policy
from vla_dino.runtime.random_checkpoint import write_random_checkpoint
from vla_dino.runtime.runtime import PolicyRuntime, RuntimeConfig

TINY_VLA_DINO = dict(
    vision=VisionTokenizerConfig(dino="tiny", image_size=56, projector="mlp", out_dim=32),
    chunk_size=6, n_action_steps=6, dim_model=32, n_heads=2, dim_feedforward=64, n_decoder_layers=1,
)


@pytest.fixture(scope="module")
def vla_dino_checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("vla_dino_run") / "checkpoints" / "last" / "pretrained_model"
    # Camera frames (48x64) differ from the tower's 56x56 input: the policy resizes on the device.
    return write_random_checkpoint(folder, "vla_dino", cameras={"front": (48, 64)}, state_dim=6, action_dim=6, **TINY_VLA_DINO)


def test_vla_dino_policy_in_the_runtime_equals_eager(vla_dino_checkpoint):
    runtime = PolicyRuntime.from_pretrained(vla_dino_checkpoint.parent, RuntimeConfig(device="cpu", warmup_iters=1))
    assert runtime.spec.policy_type == "vla_dino" and (runtime.spec.chunk_size, runtime.spec.action_dim) == (6, 6)
    policy, pre, post = load_policy(vla_dino_checkpoint, "cpu")
    for seed in range(2):
        obs = runtime._synthetic_observation(runtime.spec.inputs, seed=seed)
        np.testing.assert_allclose(runtime.predict_chunk(obs), lerobot_predict_chunk(policy, pre, post, obs, "cpu"), rtol=1e-5, atol=1e-5)


def test_lerobot_rollout_loads_our_policy_by_path(vla_dino_checkpoint, tmp_path):
    """The real CLI: plugin discovered at start-up, policy loaded from --policy.path, then it stops at the robot.

    ``build_rollout_context`` loads the policy before touching hardware, so without a robot the run
    must get past "Policy loaded" and fail only when connecting the (absent) SO-100 arm.
    """
    rollout = Path(sys.executable).parent / "lerobot-rollout"
    command = [str(rollout)] if rollout.exists() else [sys.executable, "-m", "lerobot.scripts.lerobot_rollout"]
    command += [
        "--strategy.type=base", f"--policy.path={vla_dino_checkpoint}", "--policy.device=cpu",
        "--robot.type=so100_follower", "--robot.port=/dev/does-not-exist", "--task=pick", "--duration=1",
    ]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=240, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    log = result.stdout + result.stderr
    assert "Policy loaded: type=vla_dino, device=cpu" in log, log[-3000:]
    assert "Connecting robot (so100_follower)" in log, log[-3000:]
    assert result.returncode != 0  # no robot here
