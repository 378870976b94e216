"""Frozen-encoder benchmark in the CortexBench (VC-1) manner.

Per task: K expert demos (`collect_demos`), a behaviour-cloning MLP head (256, 256, 256) trained
with MSE on [frozen features of the last `history` frames, agent_pos] → action, then M seeded
evaluation rollouts (`evaluate`) → success rate. The comparison baseline is a ResNet-18 trained
from scratch end-to-end with the same head (as LeRobot's ACT/Diffusion image backbones, here
without ImageNet weights).

Encoder specs (strings, so the CLI can list them):
- `vit:<size>`            random-init DinoEncoder of a named size (e.g. `vit:small-test`, `vit:vits14`)
- `dino:<source>`         DinoEncoder.from_pretrained(source): a `python -m vla_dino.pretrain` export,
                          a transformers folder, a hub id or an official checkpoint file
- `adapter:<dino>+<siglip>` the fused `vla_dino.adapter.VisionTokenizer` (DINO + SigLIP towers,
                          OpenVLA's second-to-last-layer features, no projector), tokens mean-pooled
- `adapter_dir:<folder>`  a saved VisionTokenizer, tokens mean-pooled
- `resnet18_scratch`      torchvision ResNet-18, random init, trained end-to-end with the head
DINO features are [CLS, mean patch token] of the last layer.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from lerobot_env_vla_dino.collect import collect_demos
from lerobot_env_vla_dino.evaluate import evaluate, wilson_interval
from lerobot_env_vla_dino.probes import encoder_features, load_frames
from lerobot_env_vla_dino.registration import metaworld_id

logger = logging.getLogger(__name__)
HIDDEN = (256, 256, 256)  # CortexBench's BC head


def mlp_head(in_dim: int, out_dim: int, hidden: tuple[int, ...] = HIDDEN) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), nn.ReLU()]
        in_dim = width
    return nn.Sequential(*layers, nn.Linear(in_dim, out_dim))


def history_indices(episodes: np.ndarray, history: int) -> np.ndarray:
    """(N, history) frame indices of [t−history+1 … t], repeating an episode's first frame at its start."""
    index = np.arange(len(episodes))
    start = np.zeros(len(episodes), dtype=int)
    for episode in np.unique(episodes):
        rows = np.flatnonzero(episodes == episode)
        start[rows] = rows[0]
    offsets = np.arange(-history + 1, 1)
    return np.maximum(index[:, None] + offsets[None, :], start[:, None])


# ---------------------------------------------------------------- encoders
class FrozenEncoder:
    """uint8 (N, H, W, 3) → (N, D) features from a frozen model."""

    def __init__(self, spec: str, image_size: int, device: str) -> None:
        from vla_dino.encoder import DinoEncoder

        kind, _, source = spec.partition(":")
        self.spec, self.device = spec, device
        if kind == "vit":
            self.model: Any = DinoEncoder.from_size(source, image_size=image_size)
        elif kind == "dino":
            self.model = DinoEncoder.from_pretrained(source)
        elif kind in ("adapter", "adapter_dir"):
            from vla_dino.adapter import VisionTokenizer, VisionTokenizerConfig

            if kind == "adapter_dir":
                self.model = VisionTokenizer.from_pretrained(source, train_mode="frozen")
            else:
                dino, _, siglip = source.partition("+")
                self.model = VisionTokenizer(
                    VisionTokenizerConfig(dino=dino, siglip=siglip or None, image_size=image_size, projector="none")
                )
        else:
            raise ValueError(f"encoder spec {spec!r}; expected vit:<size>, dino:<source>, adapter:<dino>+<siglip>, adapter_dir:<folder>")
        self.model = self.model.to(device).eval()
        self.image_size = image_size

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        from vla_dino.encoder import DinoEncoder

        if isinstance(self.model, DinoEncoder):
            return encoder_features(self.model, images, image_size=self.image_size)
        pixels = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).to(self.device)
        tokens = self.model({self.model.config.camera_names[0]: pixels}).tokens
        return tokens.mean(1).float().cpu().numpy()


class ResNetEncoder(nn.Module):
    """torchvision ResNet-18 (random init) → 512-d pooled features; ImageNet normalisation."""

    def __init__(self, image_size: int) -> None:
        super().__init__()
        from torchvision.models import resnet18

        from vla_dino.encoder import IMAGENET_MEAN, IMAGENET_STD

        self.net = resnet18(weights=None)
        self.net.fc = nn.Identity()
        self.image_size = image_size
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 → (B, 512)."""
        pixels = images.permute(0, 3, 1, 2).float() / 255.0
        if pixels.shape[-1] != self.image_size:
            pixels = nn.functional.interpolate(pixels, size=(self.image_size, self.image_size), mode="bilinear", antialias=True)
        return self.net((pixels - self.mean) / self.std)


# ---------------------------------------------------------------- behaviour cloning
@dataclass
class Normaliser:
    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def fit(cls, x: torch.Tensor) -> "Normaliser":
        return cls(x.mean(0), x.std(0).clamp_min(1e-6))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std + self.mean


class BCPolicy(nn.Module):
    """[features of `history` frames, agent_pos] → action. `encoder` is None for precomputed frozen
    features, or a trainable module on raw frames (end-to-end)."""

    def __init__(self, feature_dim: int, state_dim: int, action_dim: int, history: int, encoder: nn.Module | None = None):
        super().__init__()
        self.encoder, self.history = encoder, history
        self.head = mlp_head(feature_dim * history + state_dim, action_dim)
        self.feature_norm: Normaliser | None = None
        self.state_norm: Normaliser | None = None
        self.action_norm: Normaliser | None = None

    def forward(self, features: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """features (B, history, D) — or frames (B, history, H, W, 3) with an encoder; state (B, S)."""
        if self.encoder is not None:
            batch = features.shape[0]
            features = self.encoder(features.flatten(0, 1)).view(batch, self.history, -1)
        if self.feature_norm is not None:
            features = self.feature_norm(features)
        return self.head(torch.cat([features.flatten(1), self.state_norm(state)], 1))


def train_bc(
    policy: BCPolicy, inputs: torch.Tensor, states: torch.Tensor, actions: torch.Tensor, history: np.ndarray,
    epochs: int, batch_size: int, lr: float, seed: int, device: str,
) -> list[float]:
    """MSE on normalised actions, Adam. `inputs` are per-frame features (N, D) or frames (N, H, W, 3);
    `history` (N, history) indexes them. Returns per-epoch mean losses."""
    generator = torch.Generator().manual_seed(seed)
    if policy.encoder is None:
        policy.feature_norm = Normaliser.fit(inputs.float())
    policy.state_norm, policy.action_norm = Normaliser.fit(states), Normaliser.fit(actions)
    policy.to(device).train()
    optimiser = torch.optim.Adam(policy.parameters(), lr=lr)
    targets = policy.action_norm(actions)
    history_t = torch.as_tensor(history)
    losses = []
    for _ in range(epochs):
        order = torch.randperm(len(actions), generator=generator)
        total = 0.0
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            x = inputs[history_t[rows]].to(device)
            prediction = policy(x.float() if policy.encoder is None else x, states[rows].to(device))
            loss = nn.functional.mse_loss(prediction, targets[rows].to(device))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item() * len(rows)
        losses.append(total / len(order))
    return losses


class RolloutPolicy:
    """obs → action for the evaluator, with a per-episode frame/feature history."""

    def __init__(self, policy: BCPolicy, camera: str, device: str, frozen: Callable[[np.ndarray], np.ndarray] | None):
        self.policy, self.camera, self.device, self.frozen = policy.eval(), camera, device, frozen
        self.buffer: deque = deque(maxlen=policy.history)

    def reset(self) -> None:
        self.buffer.clear()

    @torch.no_grad()
    def __call__(self, obs: dict) -> np.ndarray:
        frame = obs["pixels"][self.camera]
        item = torch.from_numpy(self.frozen(frame[None])[0]) if self.frozen else torch.from_numpy(np.ascontiguousarray(frame))
        if not self.buffer:
            self.buffer.extend([item] * self.policy.history)
        self.buffer.append(item)
        x = torch.stack(list(self.buffer))[None].to(self.device)
        state = torch.from_numpy(obs["agent_pos"])[None].to(self.device)
        action = self.policy.action_norm.inverse(self.policy(x.float() if self.frozen else x, state))
        return action[0].cpu().numpy()


# ---------------------------------------------------------------- the benchmark
@dataclass
class FrozenBenchmarkConfig:
    tasks: list[str] = field(default_factory=lambda: ["reach-v3", "push-v3"])  # Meta-World names or env ids
    encoders: list[str] = field(default_factory=lambda: ["vit:small-test", "resnet18_scratch"])
    num_demos: int = 10  # K demos per task
    num_eval: int = 10  # M evaluation episodes per task
    image_size: int = 64  # rendered frames
    encoder_image_size: int = 56  # ViT input (multiple of 14); the ResNet sees the same size
    history: int = 1  # frames per decision (CortexBench uses 3)
    epochs: int = 200  # BC epochs on frozen features
    scratch_epochs: int = 30  # end-to-end ResNet epochs (each one runs the CNN on every frame)
    batch_size: int = 64
    lr: float = 1e-3
    scratch_lr: float = 3e-4
    max_steps: int = 150  # per evaluation episode
    eval_seed: int = 1000  # evaluation seeds start here; demo seeds start at 0
    seed: int = 0
    device: str = "cpu"
    out_dir: str = "outputs/frozen_encoder"


@dataclass
class BenchmarkRow:
    task: str
    encoder: str
    success_rate: float
    success_ci95: tuple[float, float]
    successes: int
    episodes: int
    final_bc_loss: float
    feature_dim: int
    train_seconds: float
    eval_seconds: float


def _env_id(task: str) -> str:
    return task if "/" in task else metaworld_id(task)


def demos_for(config: FrozenBenchmarkConfig, task: str) -> dict[str, Any]:
    """Collects (or reuses) K demos of `task` as PNG frames and loads them."""
    root = Path(config.out_dir) / "demos" / _env_id(task).replace("/", "__") / f"k{config.num_demos}_s{config.image_size}"
    if not root.exists():
        collect_demos(
            _env_id(task), config.num_demos, root, repo_id=f"vla_dino/{task}", seed=config.seed,
            image_size=config.image_size, use_videos=False,
        )
    return load_frames(root, repo_id=f"vla_dino/{task}")


def run_one(config: FrozenBenchmarkConfig, task: str, spec: str, demos: dict[str, Any]) -> BenchmarkRow:
    torch.manual_seed(config.seed)
    device = config.device
    history = history_indices(demos["episodes"], config.history)
    states = torch.from_numpy(demos["agent_pos"]).float()
    actions = torch.from_numpy(demos["actions"]).float()
    start = time.perf_counter()
    if spec == "resnet18_scratch":
        encoder = ResNetEncoder(config.encoder_image_size)
        policy = BCPolicy(512, states.shape[1], actions.shape[1], config.history, encoder=encoder)
        inputs, frozen, feature_dim = torch.from_numpy(demos["images"]), None, 512
        epochs, lr = config.scratch_epochs, config.scratch_lr
    else:
        frozen = FrozenEncoder(spec, config.encoder_image_size, device)
        inputs = torch.from_numpy(frozen(demos["images"]))
        feature_dim = inputs.shape[1]
        policy = BCPolicy(feature_dim, states.shape[1], actions.shape[1], config.history)
        epochs, lr = config.epochs, config.lr
    losses = train_bc(policy, inputs, states, actions, history, epochs, config.batch_size, lr, config.seed, device)
    train_seconds = time.perf_counter() - start
    camera = demos["camera"]
    result = evaluate(
        RolloutPolicy(policy, camera, device, frozen), _env_id(task), config.num_eval, seed=config.eval_seed,
        max_steps=config.max_steps, num_videos=0, env_kwargs=dict(image_size=config.image_size, cameras=(camera,)),
    )
    wins = sum(result.successes)
    return BenchmarkRow(
        task=task, encoder=spec, success_rate=result.success_rate, success_ci95=wilson_interval(wins, len(result.successes)),
        successes=wins, episodes=len(result.successes), final_bc_loss=losses[-1], feature_dim=feature_dim,
        train_seconds=train_seconds, eval_seconds=result.seconds,
    )


def run_benchmark(config: FrozenBenchmarkConfig) -> list[BenchmarkRow]:
    rows = []
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for task in config.tasks:
        demos = demos_for(config, task)
        for spec in config.encoders:
            row = run_one(config, task, spec, demos)
            logger.info("%s / %s: success %.2f", task, spec, row.success_rate)
            print(f"{task:>16} {spec:>40}: success {row.successes}/{row.episodes}  (bc loss {row.final_bc_loss:.3f})", flush=True)
            rows.append(row)
            (out / "results.json").write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return rows


def markdown_table(rows: list[BenchmarkRow]) -> str:
    """Encoders × tasks success rates (with 95% Wilson intervals) and the mean over tasks."""
    tasks = list(dict.fromkeys(r.task for r in rows))
    encoders = list(dict.fromkeys(r.encoder for r in rows))
    cell = {(r.encoder, r.task): r for r in rows}
    lines = [
        "| encoder | " + " | ".join(tasks) + " | mean |",
        "|---" * (len(tasks) + 2) + "|",
    ]
    for encoder in encoders:
        cells, rates = [], []
        for task in tasks:
            r = cell.get((encoder, task))
            if r is None:
                cells.append("–")
                continue
            low, high = r.success_ci95
            cells.append(f"{r.successes}/{r.episodes} ({low:.2f}–{high:.2f})")
            rates.append(r.success_rate)
        lines.append(f"| `{encoder}` | " + " | ".join(cells) + f" | {np.mean(rates):.2f} |")
    return "\n".join(lines)
