"""Scripted-expert demonstrations into a local LeRobotDataset.

    python -m lerobot_env_vla_dino.collect --env_id=vla_dino/MetaWorld-push-v3 --num_episodes=25 \\
        --root=outputs/demos/push --image_size=96

Per frame: `observation.images.<camera>` (video or PNG), `observation.state` (agent_pos),
`action`, `next.reward`, `next.success`, `next.done`, `episode_seed`, and the simulator state
as `sim_state.<name>` (for probes; outside `observation.*` so policies never take it as input).
Episode k uses env seed `seed + k` (counting dropped attempts), so a dataset is reproducible.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import draccus
import gymnasium as gym
import numpy as np
from lerobot.datasets.lerobot_dataset import LeRobotDataset
from tqdm import tqdm

import lerobot_env_vla_dino  # noqa: F401  (registers the env ids)
from lerobot_env_vla_dino.experts import make_expert

if TYPE_CHECKING:
    from lerobot_env_vla_dino.visual import SceneEditor, VisualCondition

logger = logging.getLogger(__name__)


def make_env(
    env_id: str, image_size: int | Sequence[int] | None = None, cameras: Sequence[str] | None = None, **kwargs
) -> gym.Env:
    """`gymnasium.make` for our ids, passing only the options that are set."""
    if env_id not in gym.registry:
        ours = [i for i in gym.registry if i.startswith("vla_dino/")]
        raise ValueError(f"unknown env id {env_id!r}; registered vla_dino ids include {ours[:6]} …")
    if image_size is not None:
        kwargs["image_size"] = image_size
    if cameras is not None:
        kwargs["cameras"] = tuple(cameras)
    return gym.make(env_id, **kwargs)


def scene_editor(env: gym.Env) -> "SceneEditor":
    """A `visual.SceneEditor` on a MuJoCo env's model and data (Meta-World, Fetch); others are an error."""
    from lerobot_env_vla_dino.common import MujocoCameras
    from lerobot_env_vla_dino.visual import SceneEditor

    base = env.unwrapped
    cameras = getattr(base, "cameras", None)
    if not isinstance(cameras, MujocoCameras):
        name = env.spec.id if env.spec is not None else type(base).__name__
        raise ValueError(f"{name} has no MuJoCo model: visual conditions are MuJoCo model edits (use a Meta-World task)")
    return SceneEditor(cameras.model, getattr(getattr(base, "sim", None), "data", None))


def dataset_features(env: gym.Env, use_videos: bool) -> dict[str, dict]:
    """LeRobotDataset features for one of our envs (probe state included)."""
    space = env.observation_space
    features: dict[str, dict] = {}
    for camera, box in space["pixels"].items():
        features[f"observation.images.{camera}"] = {
            "dtype": "video" if use_videos else "image",
            "shape": tuple(box.shape),
            "names": ["height", "width", "channels"],
        }
    state_dim = space["agent_pos"].shape[0]
    features["observation.state"] = {"dtype": "float32", "shape": (state_dim,), "names": None}
    features["action"] = {"dtype": "float32", "shape": tuple(env.action_space.shape), "names": None}
    features["next.reward"] = {"dtype": "float32", "shape": (1,), "names": None}
    features["next.success"] = {"dtype": "bool", "shape": (1,), "names": None}
    features["next.done"] = {"dtype": "bool", "shape": (1,), "names": None}
    features["episode_seed"] = {"dtype": "int64", "shape": (1,), "names": None}
    for name, value in env.unwrapped.state().items():
        features[f"sim_state.{name}"] = {"dtype": "float32", "shape": value.shape, "names": None}
    return features


def _frame(obs: dict, info: dict, action: np.ndarray, reward: float, success: bool, done: bool, seed: int, task: str) -> dict:
    frame = {f"observation.images.{camera}": image for camera, image in obs["pixels"].items()}
    frame["observation.state"] = obs["agent_pos"].astype(np.float32)
    frame["action"] = np.asarray(action, dtype=np.float32)
    frame["next.reward"] = np.array([reward], dtype=np.float32)
    frame["next.success"] = np.array([success])
    frame["next.done"] = np.array([done])
    frame["episode_seed"] = np.array([seed], dtype=np.int64)
    frame.update({f"sim_state.{name}": value for name, value in info["state"].items()})
    frame["task"] = task
    return frame


def collect_demos(
    env_id: str,
    num_episodes: int,
    root: str | Path,
    repo_id: str = "vla_dino/demos",
    seed: int = 0,
    drop_failures: bool = True,
    image_size: int | Sequence[int] = 96,
    use_videos: bool = True,
    max_steps: int | None = None,
    cameras: Sequence[str] | None = None,
    max_attempts: int | None = None,
    conditions: Sequence["VisualCondition"] | None = None,
) -> Path:
    """Roll out the scripted expert for `num_episodes` kept episodes and write them to `root`.

    `conditions` (`visual.VisualCondition`s, MuJoCo envs only): attempt k runs under
    `conditions[k % len(conditions)]`, applied to the scene with `visual.SceneEditor` before its reset.

    With `drop_failures`, failed episodes are discarded and further seeds tried, up to
    `max_attempts` (default 3 × num_episodes) rollouts; fewer episodes than asked is an error.
    Returns the dataset root.
    """
    if num_episodes < 1:
        raise ValueError(f"num_episodes={num_episodes}; expected at least 1")
    root = Path(root)
    if root.exists():
        raise FileExistsError(f"dataset root {root} already exists; pick a new --root (LeRobotDataset.create needs one)")
    env = make_env(env_id, image_size=image_size, cameras=cameras)
    max_steps = max_steps or env.spec.max_episode_steps
    editor = scene_editor(env) if conditions and not all(c.is_clean for c in conditions) else None
    expert = make_expert(env)
    task = env.unwrapped.task_description
    env.reset(seed=seed)  # the state's names and shapes come from a live episode
    dataset = LeRobotDataset.create(
        repo_id, fps=env.unwrapped.metadata["render_fps"], features=dataset_features(env, use_videos), root=root,
        use_videos=use_videos,
    )
    max_attempts = max_attempts or 3 * num_episodes
    kept = attempts = 0
    progress = tqdm(total=num_episodes, desc=f"collect {env_id}", unit="episode")
    try:
        while kept < num_episodes and attempts < max_attempts:
            episode_seed = seed + attempts
            if editor is not None:
                editor.apply(conditions[attempts % len(conditions)])
            attempts += 1
            obs, info = env.reset(seed=episode_seed)
            expert.reset()
            success = False
            for _ in range(max_steps):
                action = expert(env)
                next_obs, reward, terminated, truncated, next_info = env.step(action)
                success = next_info["is_success"]
                done = terminated or truncated
                dataset.add_frame(_frame(obs, info, action, reward, success, done, episode_seed, task))
                obs, info = next_obs, next_info
                if done:
                    break
            if drop_failures and not success:
                logger.info("dropping failed episode (seed %d)", episode_seed)
                dataset.clear_episode_buffer()
                continue
            dataset.save_episode()
            kept += 1
            progress.update(1)
            progress.set_postfix(attempts=attempts)
    finally:
        progress.close()
        dataset.finalize()
        env.close()
    if kept < num_episodes:
        raise RuntimeError(
            f"the expert succeeded in only {kept} of {attempts} episodes of {env_id}; "
            f"asked for {num_episodes} (raise max_attempts or set drop_failures=False)"
        )
    return Path(dataset.root)


@dataclass
class CollectConfig:
    """CLI of `python -m lerobot_env_vla_dino.collect`."""

    env_id: str = "vla_dino/MetaWorld-reach-v3"
    num_episodes: int = 10
    root: str = "outputs/demos/reach-v3"
    repo_id: str = "vla_dino/demos"
    seed: int = 0
    drop_failures: bool = True
    image_size: int = 96
    use_videos: bool = True
    max_steps: int | None = None
    cameras: str | None = None  # comma-separated; None: the env's default cameras
    max_attempts: int | None = None


def main(config: CollectConfig) -> Path:
    cameras = [c.strip() for c in config.cameras.split(",")] if config.cameras else None
    path = collect_demos(
        config.env_id, config.num_episodes, config.root, repo_id=config.repo_id, seed=config.seed,
        drop_failures=config.drop_failures, image_size=config.image_size, use_videos=config.use_videos,
        max_steps=config.max_steps, cameras=cameras, max_attempts=config.max_attempts,
    )
    print(f"wrote {config.num_episodes} episodes to {path}")
    return path


if __name__ == "__main__":
    main(draccus.parse(CollectConfig))
