"""Expert rollouts under chosen visual conditions, with the renderer's dense ground truth.

    python -m lerobot_env_vla_dino.scene_data --task=button-press-topdown-v3 --num_episodes=40 \\
        --varied_fraction=0.5 --out=outputs/scenes/button_train --image_size=84 --write_frames=true

Writes `scene.npz` (images uint8 (N, H, W, 3), depth float16 (N, H, W) in metres, segmentation uint8
(N, H, W) with classes `visual.SEGMENT_CLASSES`, `agent_pos`, `actions`, `episode`, `condition`
and the simulator state as `state.<name>`), `scene.json` (task, camera, conditions, seeds) and,
with `write_frames`, one PNG folder per episode under `frames/` for `python -m vla_dino.pretrain
--frames <out>/frames`. Only MuJoCo envs (Meta-World) have depth and segmentation renders.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import draccus
import numpy as np
from PIL import Image
from tqdm import tqdm

from lerobot_env_vla_dino.collect import make_env
from lerobot_env_vla_dino.experts import make_expert
from lerobot_env_vla_dino.metaworld_env import TASK_NAMES, MetaWorldEnv
from lerobot_env_vla_dino.registration import metaworld_id
from lerobot_env_vla_dino.visual import BENCHMARK_CONDITIONS, DenseLabels, SceneEditor, VisualCondition, random_condition

METAWORLD_ROBOT_ROOT = "base"  # Sawyer's pedestal body: arm, gripper and pedestal are its subtree
METAWORLD_BACKGROUND = ("tablelink", "RetainingWall")  # the table and its rim, in every Meta-World v3 scene


@dataclass
class SceneData:
    """Frames and labels of a `collect_scenes` run (all arrays share the first axis N)."""

    images: np.ndarray
    depth: np.ndarray
    segmentation: np.ndarray
    agent_pos: np.ndarray
    actions: np.ndarray
    episode: np.ndarray
    condition: np.ndarray  # index into `conditions`
    states: dict[str, np.ndarray]
    conditions: list[VisualCondition]
    task: str
    camera: str

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, rows: np.ndarray) -> "SceneData":
        pick = lambda a: a[rows]  # noqa: E731
        return SceneData(
            pick(self.images), pick(self.depth), pick(self.segmentation), pick(self.agent_pos), pick(self.actions),
            pick(self.episode), pick(self.condition), {k: pick(v) for k, v in self.states.items()},
            self.conditions, self.task, self.camera,
        )

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        arrays = dict(
            images=self.images, depth=self.depth.astype(np.float16), segmentation=self.segmentation.astype(np.uint8),
            agent_pos=self.agent_pos, actions=self.actions, episode=self.episode, condition=self.condition,
            **{f"state.{k}": v for k, v in self.states.items()},
        )
        tmp = folder / "scene.tmp.npz"
        np.savez_compressed(tmp, **arrays)
        tmp.replace(folder / "scene.npz")
        meta = {"task": self.task, "camera": self.camera, "conditions": [asdict(c) for c in self.conditions]}
        (folder / "scene.json").write_text(json.dumps(meta, indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "SceneData":
        folder = Path(folder)
        if not (folder / "scene.npz").is_file():
            raise FileNotFoundError(f"{folder}: no scene.npz; write one with python -m lerobot_env_vla_dino.scene_data")
        meta = json.loads((folder / "scene.json").read_text())
        with np.load(folder / "scene.npz") as z:
            arrays = {k: z[k] for k in z.files}
        conditions = [VisualCondition(**{k: tuple(v) if isinstance(v, list) else v for k, v in c.items()}) for c in meta["conditions"]]
        return cls(
            images=arrays["images"], depth=arrays["depth"].astype(np.float32), segmentation=arrays["segmentation"].astype(np.int64),
            agent_pos=arrays["agent_pos"], actions=arrays["actions"], episode=arrays["episode"], condition=arrays["condition"],
            states={k.removeprefix("state."): v for k, v in arrays.items() if k.startswith("state.")},
            conditions=conditions, task=meta["task"], camera=meta["camera"],
        )


def episode_conditions(
    num_episodes: int, conditions: Sequence[VisualCondition] | None, varied_fraction: float, seed: int
) -> list[VisualCondition]:
    """Per-episode conditions: `conditions` cycled, or clean episodes with a `varied_fraction` of
    random lighting/colour changes (episode order interleaved, reproducible from `seed`)."""
    if conditions:
        return [conditions[k % len(conditions)] for k in range(num_episodes)]
    if not 0.0 <= varied_fraction <= 1.0:
        raise ValueError(f"varied_fraction={varied_fraction}; expected a fraction in [0, 1]")
    rng = np.random.default_rng(seed)
    varied = set(rng.permutation(num_episodes)[: int(round(varied_fraction * num_episodes))].tolist())
    return [random_condition(rng, name=f"random_{k}") if k in varied else VisualCondition() for k in range(num_episodes)]


def collect_scenes(
    task: str,
    num_episodes: int,
    conditions: Sequence[VisualCondition] | None = None,
    varied_fraction: float = 0.0,
    image_size: int = 56,
    camera: str = "corner",
    seed: int = 0,
    max_steps: int = 150,
    frame_stride: int = 1,
    frames_dir: str | Path | None = None,
    with_labels: bool = True,
) -> SceneData:
    """Scripted-expert episodes of Meta-World `task` (episode k: env seed `seed + k`), each under its
    condition (see `episode_conditions`); every `frame_stride`-th frame is kept with its depth and
    segmentation (`with_labels=False`: zeros, for pretraining frames, a third of the render time).
    Failed expert episodes are kept: probes need frames, not successes."""
    if task not in TASK_NAMES:
        raise ValueError(f"task {task!r} has no depth/segmentation renders here; expected a Meta-World task, one of {TASK_NAMES[:5]} …")
    if num_episodes < 1 or frame_stride < 1:
        raise ValueError(f"num_episodes={num_episodes}, frame_stride={frame_stride}; expected both ≥ 1")
    per_episode = episode_conditions(num_episodes, conditions, varied_fraction, seed)
    names = list(dict.fromkeys(per_episode))
    env = make_env(metaworld_id(task), image_size=image_size, cameras=(camera,))
    sim: MetaWorldEnv = env.unwrapped
    editor = SceneEditor(sim.sim.model)
    labels = DenseLabels(sim.cameras, METAWORLD_ROBOT_ROOT, METAWORLD_BACKGROUND)
    expert = make_expert(env)
    rows: dict[str, list] = {k: [] for k in ("images", "depth", "segmentation", "agent_pos", "actions", "episode", "condition")}
    states: dict[str, list] = {}
    try:
        for episode, condition in enumerate(tqdm(per_episode, desc=f"scenes {task}", unit="episode")):
            with editor.applied(condition):
                obs, info = env.reset(seed=seed + episode)
                expert.reset()
                for t in range(max_steps):
                    action = expert(env)
                    if t % frame_stride == 0:
                        data = sim.sim.data
                        rows["images"].append(obs["pixels"][camera])
                        blank = np.zeros((image_size, image_size), np.uint8)
                        rows["depth"].append(labels.depth(data, camera) if with_labels else blank.astype(np.float32))
                        rows["segmentation"].append(labels.segmentation(data, camera).astype(np.uint8) if with_labels else blank)
                        rows["agent_pos"].append(obs["agent_pos"])
                        rows["actions"].append(action)
                        rows["episode"].append(episode)
                        rows["condition"].append(names.index(condition))
                        for key, value in info["state"].items():
                            states.setdefault(key, []).append(value)
                        if frames_dir is not None:
                            path = Path(frames_dir) / f"episode_{episode:04d}" / f"{t:04d}.png"
                            path.parent.mkdir(parents=True, exist_ok=True)
                            Image.fromarray(obs["pixels"][camera]).save(path)
                    obs, _, terminated, truncated, info = env.step(action)
                    if terminated or truncated:
                        break
    finally:
        env.close()
    return SceneData(
        images=np.stack(rows["images"]), depth=np.stack(rows["depth"]), segmentation=np.stack(rows["segmentation"]).astype(np.int64),
        agent_pos=np.stack(rows["agent_pos"]).astype(np.float32), actions=np.stack(rows["actions"]).astype(np.float32),
        episode=np.asarray(rows["episode"]), condition=np.asarray(rows["condition"]),
        states={k: np.stack(v) for k, v in states.items()}, conditions=names, task=task, camera=camera,
    )


@dataclass
class SceneDataConfig:
    """CLI of `python -m lerobot_env_vla_dino.scene_data`."""

    task: str = "button-press-topdown-v3"
    num_episodes: int = 40
    out: str = "outputs/scenes/button-press-topdown-v3"
    benchmark_conditions: bool = False  # cycle the benchmark's named conditions instead of random ones
    varied_fraction: float = 0.5  # with random conditions: fraction of episodes under a random light/colour change
    image_size: int = 56
    camera: str = "corner"
    seed: int = 0
    max_steps: int = 150
    frame_stride: int = 1
    write_frames: bool = False  # also PNG folders under <out>/frames for vla_dino.pretrain
    with_labels: bool = True  # render depth and segmentation (false: frames only, for pretraining data)
    conditions: list[str] = field(default_factory=list)  # names from the benchmark's conditions (overrides the two above)


def main(config: SceneDataConfig) -> Path:
    out = Path(config.out)
    if (out / "scene.npz").exists():
        raise FileExistsError(f"{out}/scene.npz exists; choose a new --out")
    unknown = [n for n in config.conditions if n not in BENCHMARK_CONDITIONS]
    if unknown:
        raise ValueError(f"--conditions {unknown} unknown; expected names from {list(BENCHMARK_CONDITIONS)}")
    chosen = [BENCHMARK_CONDITIONS[n] for n in config.conditions] or (list(BENCHMARK_CONDITIONS.values()) if config.benchmark_conditions else None)
    scenes = collect_scenes(
        config.task, config.num_episodes, chosen, config.varied_fraction, config.image_size, config.camera,
        config.seed, config.max_steps, config.frame_stride, out / "frames" if config.write_frames else None,
        config.with_labels,
    )
    scenes.save(out)
    print(f"wrote {len(scenes)} frames of {config.num_episodes} episodes to {out}")
    return out


if __name__ == "__main__":
    main(draccus.parse(SceneDataConfig))
