"""Roll out a policy in one of our envs: success rate with a 95% Wilson interval, return, length,
a few MP4 videos and a JSON result file.

    python -m lerobot_env_vla_dino.evaluate --policy=outputs/train/checkpoints/last/pretrained_model \\
        --env_id=vla_dino/MetaWorld-push-v3 --num_episodes=50 --out_dir=outputs/eval/push

Policies: a LeRobot `PreTrainedPolicy` (or its checkpoint folder, loaded with LeRobot's own
loaders together with its saved pre/post-processors), or any callable `obs -> action` on one
observation of the shared convention. Episodes run in waves of `num_envs` (a gymnasium vector
env; async workers with `async_envs`), episode k seeded `seed + k`.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import av
import draccus
import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode

import lerobot_env_vla_dino  # noqa: F401  (registers the env ids)
from lerobot_env_vla_dino.collect import make_env

Z_95 = 1.959963984540054


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval: (p̂ + z²/2n ± z·sqrt(p̂(1−p̂)/n + z²/4n²)) / (1 + z²/n)."""
    if trials <= 0:
        raise ValueError(f"trials={trials}; expected at least one episode")
    p = successes / trials
    denominator = 1.0 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def write_mp4(path: str | Path, frames: Sequence[np.ndarray], fps: int) -> Path:
    """uint8 (H, W, 3) frames → H.264 MP4 with PyAV (sides padded to even sizes as yuv420p needs)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames[0].shape[:2]
    pad_h, pad_w = height % 2, width % 2
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=int(fps))
        stream.width, stream.height, stream.pix_fmt = width + pad_w, height + pad_h, "yuv420p"
        for frame in frames:
            frame = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        container.mux(stream.encode())
    return path


@dataclass
class EvalResult:
    env_id: str
    num_episodes: int
    seed: int
    success_rate: float
    success_ci95: tuple[float, float]
    mean_return: float
    mean_length: float
    successes: list[bool] = field(repr=False)
    returns: list[float] = field(repr=False)
    lengths: list[int] = field(repr=False)
    videos: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2))
        return path


class LeRobotPolicyRunner:
    """A LeRobot policy + its processors, acting on batched observations of our envs."""

    def __init__(self, policy: Any, preprocessor: Any = None, postprocessor: Any = None) -> None:
        from lerobot.policies.factory import make_pre_post_processors

        self.policy = policy.eval()
        if preprocessor is None or postprocessor is None:
            pretrained = getattr(policy.config, "pretrained_path", None)
            preprocessor, postprocessor = make_pre_post_processors(
                policy.config,
                pretrained_path=str(pretrained) if pretrained else None,
                preprocessor_overrides={"device_processor": {"device": str(policy.config.device)}},
            )
        self.preprocessor, self.postprocessor = preprocessor, postprocessor

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | None = None) -> "LeRobotPolicyRunner":
        """Loads a checkpoint folder (`config.json`, `model.safetensors`, processor files); `device=None`
        keeps the checkpoint's."""
        from vla_dino.runtime.loading import load_policy

        return cls(*load_policy(path, device))

    def reset(self) -> None:
        self.policy.reset()

    def __call__(self, observation: dict, task: list[str]) -> np.ndarray:
        from lerobot.envs.utils import preprocess_observation

        batch = preprocess_observation(observation)
        batch["task"] = task
        batch = self.preprocessor(batch)
        with torch.inference_mode():
            action = self.policy.select_action(batch)
        return self.postprocessor(action).to("cpu").numpy()


class CallableRunner:
    """Any per-observation callable `obs -> action`, applied to each env of the wave."""

    def __init__(self, fn: Callable[[dict], Any]) -> None:
        self.fn = fn

    def reset(self) -> None:
        if hasattr(self.fn, "reset"):
            self.fn.reset()

    def __call__(self, observation: dict, task: list[str]) -> np.ndarray:
        count = len(task)
        singles = [_index(observation, i) for i in range(count)]
        return np.stack([np.asarray(self.fn(obs), dtype=np.float32) for obs in singles])


def _set_up(env: gym.Env, env_setup: Callable[[gym.Env], Any] | None) -> gym.Env:
    if env_setup is not None:
        env_setup(env)
    return env


def _index(tree: Any, i: int) -> Any:
    return {k: _index(v, i) for k, v in tree.items()} if isinstance(tree, dict) else tree[i]


def as_runner(policy: Any, device: str | None = None) -> LeRobotPolicyRunner | CallableRunner:
    """Checkpoint folder → LeRobot runner; PreTrainedPolicy → LeRobot runner; callable → callable runner."""
    if isinstance(policy, (str, Path)):
        return LeRobotPolicyRunner.from_pretrained(policy, device=device)
    if isinstance(policy, (LeRobotPolicyRunner, CallableRunner)):
        return policy
    # A PreTrainedPolicy instance means its module is loaded: no need to import lerobot.policies
    # (tens of seconds: it pulls in diffusers) just to recognise a plain callable.
    pretrained = sys.modules.get("lerobot.policies.pretrained")
    if pretrained is not None and isinstance(policy, pretrained.PreTrainedPolicy):
        return LeRobotPolicyRunner(policy)
    if callable(policy):
        return CallableRunner(policy)
    raise TypeError(f"policy of type {type(policy).__name__}; expected a checkpoint folder, a PreTrainedPolicy or a callable")


def evaluate(
    policy: Any,
    env_id: str,
    num_episodes: int,
    seed: int = 0,
    out_dir: str | Path | None = None,
    max_steps: int | None = None,
    num_videos: int = 2,
    num_envs: int = 1,
    async_envs: bool = False,
    env_kwargs: dict | None = None,
    device: str | None = None,
    env_setup: Callable[[gym.Env], Any] | None = None,
) -> EvalResult:
    """Runs `num_episodes` episodes (episode k: env seed `seed + k`) and summarises them.

    `env_setup(env)` is called once on every env the evaluation creates, before its first reset
    (e.g. `frozen_benchmark.ApplyCondition`, a visual change of the scene); with `async_envs` it
    must be picklable.

    Return is the sum of rewards until the episode ends (success, with termination on success, or
    `max_steps`, default the env's registered limit). Writes `eval_result.json` and
    `videos/episode_<k>.mp4` (first camera) for the first `num_videos` episodes under `out_dir`.
    """
    if num_episodes < 1 or num_envs < 1:
        raise ValueError(f"num_episodes={num_episodes}, num_envs={num_envs}; expected both ≥ 1")
    runner = as_runner(policy, device=device)
    env_kwargs = dict(env_kwargs or {})
    probe = make_env(env_id, **env_kwargs)
    max_steps = max_steps or probe.spec.max_episode_steps
    fps = probe.unwrapped.metadata["render_fps"]
    task = probe.unwrapped.task_description
    first_camera = probe.unwrapped.camera_names[0]
    probe.close()
    num_envs = min(num_envs, num_episodes)
    factories = [lambda: _set_up(make_env(env_id, **env_kwargs), env_setup) for _ in range(num_envs)]
    vector_cls = gym.vector.AsyncVectorEnv if async_envs and num_envs > 1 else gym.vector.SyncVectorEnv
    envs = vector_cls(factories, autoreset_mode=AutoresetMode.NEXT_STEP)

    successes: list[bool] = []
    returns: list[float] = []
    lengths: list[int] = []
    videos: list[str] = []
    start = time.perf_counter()
    try:
        for wave_start in range(0, num_episodes, num_envs):
            count = min(num_envs, num_episodes - wave_start)
            seeds = [seed + wave_start + i for i in range(num_envs)]
            obs, _ = envs.reset(seed=seeds)
            runner.reset()
            done = np.zeros(num_envs, bool)
            done[count:] = True  # spare envs of the last wave run but are not counted
            # Finished envs keep stepping (autoreset into throw-away episodes) until the wave ends.
            success = np.zeros(num_envs, bool)
            total = np.zeros(num_envs)
            length = np.zeros(num_envs, int)
            frames: list[list[np.ndarray]] = [[obs["pixels"][first_camera][i]] for i in range(num_envs)]
            for _ in range(max_steps):
                if done.all():
                    break
                action = runner(obs, [task] * num_envs)
                obs, reward, terminated, truncated, info = envs.step(action)
                active = ~done
                total[active] += reward[active]
                length[active] += 1
                success[active] |= np.asarray(info["is_success"], bool)[active]
                for i in np.flatnonzero(active):
                    frames[i].append(obs["pixels"][first_camera][i])
                done |= terminated | truncated
            for i in range(count):
                episode = wave_start + i
                successes.append(bool(success[i]))
                returns.append(float(total[i]))
                lengths.append(int(length[i]))
                if out_dir is not None and episode < num_videos:
                    videos.append(str(write_mp4(Path(out_dir) / "videos" / f"episode_{episode}.mp4", frames[i], fps)))
    finally:
        envs.close()
    low, high = wilson_interval(sum(successes), len(successes))
    result = EvalResult(
        env_id=env_id,
        num_episodes=num_episodes,
        seed=seed,
        success_rate=float(np.mean(successes)),
        success_ci95=(low, high),
        mean_return=float(np.mean(returns)),
        mean_length=float(np.mean(lengths)),
        successes=successes,
        returns=returns,
        lengths=lengths,
        videos=videos,
        seconds=time.perf_counter() - start,
    )
    if out_dir is not None:
        result.save(Path(out_dir) / "eval_result.json")
    return result


@dataclass
class EvaluateConfig:
    """CLI of `python -m lerobot_env_vla_dino.evaluate`."""

    policy: str = ""  # a LeRobot checkpoint folder (…/pretrained_model)
    env_id: str = "vla_dino/MetaWorld-reach-v3"
    num_episodes: int = 10
    seed: int = 1000  # away from the demo seeds (collect starts at 0)
    out_dir: str = "outputs/eval"
    max_steps: int | None = None
    num_videos: int = 2
    num_envs: int = 1
    async_envs: bool = False
    image_size: int | None = None
    device: str | None = None


def main(config: EvaluateConfig) -> EvalResult:
    if not config.policy:
        raise ValueError("--policy is required: a LeRobot checkpoint folder (containing config.json)")
    env_kwargs = {"image_size": config.image_size} if config.image_size else {}
    result = evaluate(
        config.policy, config.env_id, config.num_episodes, seed=config.seed, out_dir=config.out_dir,
        max_steps=config.max_steps, num_videos=config.num_videos, num_envs=config.num_envs,
        async_envs=config.async_envs, env_kwargs=env_kwargs, device=config.device,
    )
    low, high = result.success_ci95
    print(
        f"{config.env_id}: success {result.success_rate:.3f} (95% CI {low:.3f}–{high:.3f}) over "
        f"{result.num_episodes} episodes, return {result.mean_return:.2f}, length {result.mean_length:.1f}; "
        f"results in {config.out_dir}/eval_result.json"
    )
    return result


if __name__ == "__main__":
    main(draccus.parse(EvaluateConfig))
