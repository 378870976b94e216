"""Our policies driven through LeRobot's own entry points, offline, on a tiny local LeRobotDataset.

- `lerobot-train --policy.type=vla_dino …` and `lerobot-eval --policy.path=… --env.type=pusht` as
  subprocesses (the installed console scripts, so LeRobot discovers the plugin by itself);
- `act_vla_dino` / `diffusion_vla_dino` through LeRobot's `train()` with a CLI-parsed config,
  then reloaded with `from_pretrained` and LeRobot's saved processors.
The dataset has PushT's shapes (state 2, action 2, one camera) so the eval runs on gym-pusht.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import draccus
import numpy as np
import pytest
import torch
from lerobot.configs.train import TrainPipelineConfig
from lerobot.datasets.lerobot_dataset import LeRobotDataset
from lerobot.policies.factory import get_policy_class, make_pre_post_processors
from lerobot.utils.import_utils import register_third_party_plugins

pytestmark = pytest.mark.slow
register_third_party_plugins()  # in-process, the same discovery the console scripts run

BIN = Path(sys.executable).parent
IMAGE = 64
TINY_VLA_DINO = [
    "--policy.vision.dino=tiny", "--policy.vision.image_size=56", "--policy.vision.out_dim=32",
    "--policy.head=mlp", "--policy.mlp_token_dim=4", "--policy.mlp_hidden_dim=32",
    "--policy.chunk_size=4", "--policy.n_action_steps=4",
]
TINY_ACT = [
    "--policy.backbone.dino=tiny", "--policy.backbone.image_size=56", "--policy.dim_model=32", "--policy.n_heads=2",
    "--policy.dim_feedforward=64", "--policy.n_encoder_layers=1", "--policy.n_vae_encoder_layers=1",
    "--policy.latent_dim=4", "--policy.chunk_size=4", "--policy.n_action_steps=4",
]
TINY_DIFFUSION = [
    "--policy.backbone.dino=tiny", "--policy.backbone.image_size=56", "--policy.horizon=8",
    "--policy.n_action_steps=4", "--policy.down_dims=[16,32]", "--policy.diffusion_step_embed_dim=16",
    "--policy.num_train_timesteps=10", "--policy.spatial_softmax_num_keypoints=8",
]


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory) -> Path:
    """3 episodes × 12 frames: a 64² camera, 2-D state and 2-D action in PushT's pixel range."""
    root = tmp_path_factory.mktemp("data") / "tiny_pusht"
    features = {
        "observation.image": {"dtype": "image", "shape": (IMAGE, IMAGE, 3), "names": ["height", "width", "channel"]},
        "observation.state": {"dtype": "float32", "shape": (2,), "names": ["x", "y"]},
        "action": {"dtype": "float32", "shape": (2,), "names": ["x", "y"]},
    }
    dataset = LeRobotDataset.create("local/tiny_pusht", fps=10, features=features, root=root, use_videos=False)
    rng = np.random.default_rng(0)
    for _ in range(3):
        for _ in range(12):
            dataset.add_frame({
                "observation.image": rng.integers(0, 256, (IMAGE, IMAGE, 3), dtype=np.uint8),
                "observation.state": rng.uniform(0, 512, 2).astype(np.float32),
                "action": rng.uniform(0, 512, 2).astype(np.float32),
                "task": "push the T",
            })
        dataset.save_episode()
    dataset.finalize()
    return root


def train_args(policy_type: str, root: Path, output: Path, steps: int, extra: list[str]) -> list[str]:
    return [
        f"--policy.type={policy_type}", "--dataset.repo_id=local/tiny_pusht", f"--dataset.root={root}",
        "--policy.push_to_hub=false", "--policy.device=cpu", f"--steps={steps}", "--batch_size=4",
        "--num_workers=0", f"--save_freq={steps}", "--log_freq=1", f"--output_dir={output}",
        "--wandb.enable=false", *extra,
    ]


def run(command: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled", "MUJOCO_GL": "egl"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, f"{command[0]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def test_lerobot_train_and_eval_cli_with_vla_dino(dataset_root, tmp_path):
    output = tmp_path / "train"
    run([str(BIN / "lerobot-train"), *train_args("vla_dino", dataset_root, output, 2, TINY_VLA_DINO)])
    checkpoint = output / "checkpoints" / "last" / "pretrained_model"
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["type"] == "vla_dino" and config["head"] == "mlp"
    assert config["vision"]["camera_names"] == ["image"] and config["vision"]["proprio_dim"] == 2
    assert config["normalization_mapping"]["VISUAL"] == "IDENTITY"
    step = json.loads((output / "checkpoints" / "last" / "training_state" / "training_step.json").read_text())
    assert step["step"] == 2

    # the checkpoint reloads through LeRobot's factory and acts on a dataset frame
    policy = get_policy_class("vla_dino").from_pretrained(checkpoint)
    pre, post = make_pre_post_processors(policy.config, pretrained_path=str(checkpoint))
    frame = LeRobotDataset("local/tiny_pusht", root=dataset_root)[0]
    obs = {key: frame[key] for key in ("observation.image", "observation.state")}
    action = post(policy.select_action(pre(obs)))
    assert action.shape == (1, 2) and torch.isfinite(action).all()

    evaluation = tmp_path / "eval"
    run([
        str(BIN / "lerobot-eval"), f"--policy.path={checkpoint}", "--policy.device=cpu", "--env.type=pusht",
        "--env.episode_length=8", "--env.observation_height=96", "--env.observation_width=96",
        "--eval.n_episodes=1", "--eval.batch_size=1", "--eval.use_async_envs=false", f"--output_dir={evaluation}",
    ])
    info = json.loads((evaluation / "eval_info.json").read_text())
    assert info["overall"]["n_episodes"] == 1
    assert 0.0 <= info["overall"]["pc_success"] <= 100.0


@pytest.mark.parametrize(
    "policy_type, extra", [("act_vla_dino", TINY_ACT), ("diffusion_vla_dino", TINY_DIFFUSION)]
)
def test_lerobot_train_function_with_swapped_backbones(dataset_root, tmp_path, policy_type, extra):
    from lerobot.scripts.lerobot_train import train

    output = tmp_path / "train"
    config = draccus.parse(TrainPipelineConfig, args=train_args(policy_type, dataset_root, output, 2, extra))
    train(config)
    checkpoint = output / "checkpoints" / "last" / "pretrained_model"
    policy = get_policy_class(policy_type).from_pretrained(checkpoint)
    assert policy.config.backbone.dino == "tiny" and policy.config.pretrained_backbone_weights is None
    pre, post = make_pre_post_processors(policy.config, pretrained_path=str(checkpoint))
    frame = LeRobotDataset("local/tiny_pusht", root=dataset_root)[0]
    obs = {key: frame[key] for key in ("observation.image", "observation.state")}
    action = post(policy.select_action(pre(obs)))
    assert action.shape == (1, 2) and torch.isfinite(action).all()
