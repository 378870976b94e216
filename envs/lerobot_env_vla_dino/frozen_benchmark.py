"""Frozen-encoder benchmark in the CortexBench (VC-1) manner, with visual changes made in the simulator.

Per task: K expert demos (`collect_demos`), a behaviour-cloning MLP head (256, 256, 256) trained
with MSE on [frozen features of the last `history` frames, agent_pos] → action, then M seeded
evaluation rollouts (`evaluate`) → success rate with a 95 % Wilson interval, once per evaluation
condition (`visual.BENCHMARK_CONDITIONS`: lighting, material colours, camera pose, applied as
MuJoCo model edits to every evaluation env; Meta-World only — PushT is pymunk and runs clean).
Training demos can themselves be under varied conditions (`demo_varied_fraction`). Defaults are
CortexBench's: 25 demos, 25 evaluation episodes, 3-frame history.

Encoder specs (strings, so the CLI can list them):
- `vit:<size>[@seed<N>]`  random-init DinoEncoder of a named size (e.g. `vit:small-test@seed1`);
                          the init is seeded (N, default the run's `seed`), so seeds are baselines
- `dino:<source>[@seed<N>]` DinoEncoder.from_pretrained(source): a `python -m vla_dino.pretrain` export,
                          a transformers folder, a hub id or an official checkpoint file; with `@seed<N>`,
                          random init (seed N) of that checkpoint's architecture: its baseline
- `pixels[:<side>]`       raw pixels, area-averaged to side × side (default 12) and flattened
- `adapter:<dino>+<siglip>` the fused `vla_dino.adapter.VisionTokenizer` (DINO + SigLIP towers,
                          OpenVLA's second-to-last-layer features, no projector), tokens mean-pooled
- `adapter_dir:<folder>`  a saved VisionTokenizer, tokens mean-pooled
- `resnet18_scratch`      torchvision ResNet-18, random init, trained end-to-end with the head
                          (as LeRobot's ACT/Diffusion image backbones, here without ImageNet weights)
- `<label>=<spec>`         names the spec's row group: specs sharing a label (one recipe pretrained
                          with several seeds) get one more table row, the range over them
DINO features are [CLS, mean patch token] of the last layer. Seeds of one random init
(`vit:x@seed0`, `vit:x@seed1`, … or `dino:x@seedN`) are grouped the same way.
"""

from __future__ import annotations

import copy
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

from lerobot_env_vla_dino.collect import collect_demos, make_env, scene_editor
from lerobot_env_vla_dino.evaluate import evaluate, wilson_interval
from lerobot_env_vla_dino.probes import encoder_features, load_demo_arrays
from lerobot_env_vla_dino.registration import metaworld_id
from lerobot_env_vla_dino.scene_data import episode_conditions
from lerobot_env_vla_dino.visual import BENCHMARK_CONDITIONS, VisualCondition

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
ENCODER_SPECS = "[<label>=]vit:<size>[@seed<N>], dino:<source>[@seed<N>], pixels[:<side>], adapter:<dino>+<siglip>, adapter_dir:<folder>, resnet18_scratch"
PIXEL_SIDE = 12  # raw-pixel baseline: frames area-averaged to 12 × 12 (already R² ≈ 0.99 for hand/object position from a fixed camera)


@dataclass(frozen=True)
class EncoderSpec:
    kind: str  # vit, dino, pixels, adapter, adapter_dir, resnet18_scratch
    source: str = ""
    seed: int | None = None  # vit: the random init's seed; dino: random init of the checkpoint's architecture
    label: str = ""  # `<label>=<spec>`: the row group of the table

    @classmethod
    def parse(cls, spec: str) -> "EncoderSpec":
        """`vit:small-test@seed1` → EncoderSpec('vit', 'small-test', 1); an unknown spec is an error naming --encoders."""
        label = ""
        if "=" in spec.split(":", 1)[0]:
            label, _, spec = spec.partition("=")
        kind, _, source = spec.partition(":")
        bad = ValueError(f"--encoders: {spec!r} is not an encoder spec; expected one of {ENCODER_SPECS}")
        if kind == "resnet18_scratch" and not source:
            return cls(kind, label=label)
        if kind == "pixels":
            if source and not (source.isdigit() and int(source) >= 1):
                raise bad
            return cls(kind, source or str(PIXEL_SIDE), label=label)
        if kind in ("vit", "dino") and source:
            name, at, seed = source.rpartition("@")
            if not at:
                return cls(kind, source, label=label)
            if not (seed.startswith("seed") and seed[4:].isdigit()):
                raise ValueError(f"--encoders: {spec!r}: the seed is written @seed<N>, e.g. {kind}:{name}@seed1")
            return cls(kind, name, int(seed[4:]), label)
        if kind in ("adapter", "adapter_dir") and source:
            return cls(kind, source, label=label)
        raise bad

    @property
    def base(self) -> str:
        """The spec without its seed and label (what seeds of one random init share)."""
        return f"{self.kind}:{self.source}" if self.source else self.kind

    @property
    def group(self) -> str | None:
        """The table's range row this spec belongs to: its label, or its random init's seeds; None: none."""
        if self.label:
            return f"`{self.label}`"
        if self.seed is not None:
            return f"`{self.base}` random init"
        return None


def pixel_features(images: np.ndarray, side: int = PIXEL_SIDE) -> np.ndarray:
    """uint8 (N, H, W, 3) → (N, 3·side²) frames area-averaged to side × side, in [0, 1]."""
    pixels = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    return nn.functional.adaptive_avg_pool2d(pixels, side).flatten(1).numpy()


class FrozenEncoder:
    """uint8 (N, H, W, 3) → (N, D) features from a frozen model (or raw pixels)."""

    def __init__(self, spec: str, image_size: int, device: str, default_seed: int = 0) -> None:
        from vla_dino.encoder import DinoEncoder

        parsed = EncoderSpec.parse(spec)
        self.spec, self.device, self.image_size = spec, device, image_size
        self.model: Any = None
        if parsed.kind == "resnet18_scratch":
            raise ValueError("resnet18_scratch is trained end to end, not a frozen encoder; use ResNetEncoder")
        if parsed.kind == "pixels":
            self.pixel_side = int(parsed.source)
            return
        if parsed.kind == "vit":
            with torch.random.fork_rng(devices=[]):  # the init depends on the seed only, not on what ran before
                torch.manual_seed(default_seed if parsed.seed is None else parsed.seed)
                self.model = DinoEncoder.from_size(parsed.source, image_size=image_size)
        elif parsed.kind == "dino":
            self.model = DinoEncoder.from_pretrained(parsed.source)
            if parsed.seed is not None:  # random init of the same architecture
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(parsed.seed)
                    self.model = DinoEncoder(copy.deepcopy(self.model.config))
        else:
            from vla_dino.adapter import VisionTokenizer, VisionTokenizerConfig

            if parsed.kind == "adapter_dir":
                self.model = VisionTokenizer.from_pretrained(parsed.source, train_mode="frozen")
            else:
                dino, _, siglip = parsed.source.partition("+")
                self.model = VisionTokenizer(
                    VisionTokenizerConfig(dino=dino, siglip=siglip or None, image_size=image_size, projector="none")
                )
        self.model = self.model.to(device).eval()

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        from vla_dino.encoder import DinoEncoder

        if self.model is None:
            return pixel_features(images, self.pixel_side)
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
class ApplyCondition:
    """`evaluate`'s env_setup: puts an evaluation env's scene under `condition` for all its episodes
    (a MuJoCo model edit that resets do not undo). Picklable, so async vector envs can use it."""

    condition: VisualCondition

    def __call__(self, env: Any) -> None:
        scene_editor(env).apply(self.condition)


@dataclass
class FrozenBenchmarkConfig:
    tasks: list[str] = field(default_factory=lambda: ["reach-v3", "push-v3"])  # Meta-World names or env ids
    encoders: list[str] = field(  # see the module docstring; random init of one architecture over 3 seeds
        default_factory=lambda: [
            "vit:small-test@seed0", "vit:small-test@seed1", "vit:small-test@seed2", "pixels", "resnet18_scratch",
        ]
    )
    eval_conditions: list[str] = field(default_factory=lambda: ["clean"])  # names in visual.BENCHMARK_CONDITIONS
    demo_varied_fraction: float = 0.0  # fraction of demo episodes under a random light/colour change (Meta-World)
    num_demos: int = 25  # K demos per task (CortexBench: 25)
    num_eval: int = 25  # M evaluation episodes per task and condition (CortexBench: 25)
    image_size: int = 64  # rendered frames
    encoder_image_size: int = 56  # ViT input (multiple of 14); the ResNet sees the same size
    history: int = 3  # frames per decision (CortexBench: 3)
    epochs: int = 200  # BC epochs on frozen features
    scratch_epochs: int = 30  # end-to-end ResNet epochs (each one runs the CNN on every frame)
    batch_size: int = 64
    lr: float = 1e-3
    scratch_lr: float = 3e-4
    max_steps: int = 150  # per evaluation episode
    demo_max_steps: int | None = None  # per demo episode (None: the env's limit)
    keep_failed_demos: bool = False  # keep expert episodes that fail (for tiny smoke runs)
    eval_seed: int = 1000  # evaluation seeds start here; demo seeds start at 0
    seed: int = 0  # BC training, demo seeds, and the init of `vit:<size>` specs without @seed
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
    condition: str = "clean"  # the evaluation's visual condition (visual.BENCHMARK_CONDITIONS)
    mean_return: float = float("nan")  # the env's reward summed per episode (PushT: coverage), meaned


def _env_id(task: str) -> str:
    return task if "/" in task else metaworld_id(task)


def _has_mujoco_scene(task: str) -> bool:
    env = make_env(_env_id(task))
    try:
        scene_editor(env)
        return True
    except ValueError:
        return False
    finally:
        env.close()


def validate(config: FrozenBenchmarkConfig) -> None:
    """Every argument checked before any demo is collected; errors name the argument."""
    for name in ("num_demos", "num_eval", "history", "max_steps"):
        if getattr(config, name) < 1:
            raise ValueError(f"--{name}={getattr(config, name)}; expected at least 1")
    if not config.tasks or not config.encoders or not config.eval_conditions:
        raise ValueError("--tasks, --encoders and --eval_conditions each need at least one entry")
    for spec in config.encoders:
        EncoderSpec.parse(spec)
    unknown = [c for c in config.eval_conditions if c not in BENCHMARK_CONDITIONS]
    if unknown:
        raise ValueError(f"--eval_conditions: {unknown} unknown; expected names from {list(BENCHMARK_CONDITIONS)}")
    if not 0.0 <= config.demo_varied_fraction <= 1.0:
        raise ValueError(f"--demo_varied_fraction={config.demo_varied_fraction}; expected a fraction in [0, 1]")
    changed = [c for c in config.eval_conditions if not BENCHMARK_CONDITIONS[c].is_clean]
    for task in config.tasks:
        if (changed or config.demo_varied_fraction > 0) and not _has_mujoco_scene(task):
            what = f"--eval_conditions {changed}" if changed else f"--demo_varied_fraction={config.demo_varied_fraction}"
            raise ValueError(
                f"task {task!r} has no MuJoCo scene to change, so {what} cannot apply to it (visual conditions are "
                "MuJoCo model edits: Meta-World tasks); evaluate it with --eval_conditions='[clean]' in its own run"
            )


def demos_for(config: FrozenBenchmarkConfig, task: str) -> dict[str, Any]:
    """Collects (or reuses) K demos of `task` as PNG frames and loads them."""
    name = f"k{config.num_demos}_s{config.image_size}"
    if config.demo_varied_fraction > 0:
        name += f"_varied{config.demo_varied_fraction:g}"
    if config.demo_max_steps or config.keep_failed_demos:
        name += f"_steps{config.demo_max_steps}_keep{int(config.keep_failed_demos)}"
    root = Path(config.out_dir) / "demos" / _env_id(task).replace("/", "__") / f"{name}_seed{config.seed}"
    if not root.exists():
        attempts = 3 * config.num_demos
        conditions = (
            episode_conditions(attempts, None, config.demo_varied_fraction, config.seed) if config.demo_varied_fraction > 0 else None
        )
        collect_demos(
            _env_id(task), config.num_demos, root, repo_id=f"vla_dino/{task}", seed=config.seed,
            image_size=config.image_size, use_videos=False, max_steps=config.demo_max_steps,
            drop_failures=not config.keep_failed_demos, max_attempts=attempts, conditions=conditions,
        )
    return load_demo_arrays(root, repo_id=f"vla_dino/{task}")


def run_one(config: FrozenBenchmarkConfig, task: str, spec: str, demos: dict[str, Any]) -> list[BenchmarkRow]:
    """Trains one BC policy on `demos` with encoder `spec`, evaluates it under each of `config.eval_conditions`."""
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
        frozen = FrozenEncoder(spec, config.encoder_image_size, device, default_seed=config.seed)
        inputs = torch.from_numpy(frozen(demos["images"]))
        feature_dim = inputs.shape[1]
        policy = BCPolicy(feature_dim, states.shape[1], actions.shape[1], config.history)
        epochs, lr = config.epochs, config.lr
    losses = train_bc(policy, inputs, states, actions, history, epochs, config.batch_size, lr, config.seed, device)
    train_seconds = time.perf_counter() - start
    camera = demos["camera"]
    rows = []
    for name in config.eval_conditions:
        condition = BENCHMARK_CONDITIONS[name]
        result = evaluate(
            RolloutPolicy(policy, camera, device, frozen), _env_id(task), config.num_eval, seed=config.eval_seed,
            max_steps=config.max_steps, num_videos=0, env_kwargs=dict(image_size=config.image_size, cameras=(camera,)),
            env_setup=None if condition.is_clean else ApplyCondition(condition),
        )
        wins = sum(result.successes)
        rows.append(
            BenchmarkRow(
                task=task, encoder=spec, success_rate=result.success_rate,
                success_ci95=wilson_interval(wins, len(result.successes)), successes=wins, episodes=len(result.successes),
                final_bc_loss=losses[-1], feature_dim=feature_dim, train_seconds=train_seconds,
                eval_seconds=result.seconds, condition=name, mean_return=result.mean_return,
            )
        )
    return rows


def run_benchmark(config: FrozenBenchmarkConfig) -> list[BenchmarkRow]:
    validate(config)
    rows: list[BenchmarkRow] = []
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for task in config.tasks:
        demos = demos_for(config, task)
        for spec in config.encoders:
            for row in run_one(config, task, spec, demos):
                logger.info("%s / %s / %s: success %.2f", task, spec, row.condition, row.success_rate)
                print(
                    f"{task:>16} {row.condition:>26} {spec:>40}: success {row.successes}/{row.episodes}  "
                    f"(bc loss {row.final_bc_loss:.3f})",
                    flush=True,
                )
                rows.append(row)
            (out / "results.json").write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return rows


def spec_groups(encoders: list[str]) -> dict[str, list[str]]:
    """Group title → the specs in it (`EncoderSpec.group`), in the order given."""
    groups: dict[str, list[str]] = {}
    for encoder in encoders:
        group = EncoderSpec.parse(encoder).group
        if group is not None:
            groups.setdefault(group, []).append(encoder)
    return groups


def markdown_table(rows: list[BenchmarkRow]) -> str:
    """Encoders × (task, condition) success rates with 95 % Wilson intervals, and the mean over cells.

    Columns are tasks when every row is clean, else `task · condition`; with changed conditions the
    means over clean and over changed cells are added. Random-init specs that differ only in their
    seed (`vit:x@seed0`, `vit:x@seed1`, …), and specs sharing a `<label>=`, get one more row each:
    the range (min–max) over them.
    """
    columns = list(dict.fromkeys((r.task, r.condition) for r in rows))
    all_clean = all(BENCHMARK_CONDITIONS.get(c, VisualCondition()).is_clean for _, c in columns)
    clean_cols = [col for col in columns if col[1] == "clean"]
    changed_cols = [col for col in columns if col[1] != "clean"]
    encoders = list(dict.fromkeys(r.encoder for r in rows))
    cell = {(r.encoder, r.task, r.condition): r for r in rows}
    titles = [task if all_clean else f"{task} · {condition}" for task, condition in columns]
    extra = [] if all_clean or not clean_cols else ["mean clean", "mean changed"]
    lines = ["| encoder | " + " | ".join(titles + ["mean"] + extra) + " |", "|---" * (len(titles) + 2 + len(extra)) + "|"]

    def means(encoder: str) -> list[float]:
        out = []
        for group in [columns] + ([clean_cols, changed_cols] if extra else []):
            rates = [cell[(encoder, *col)].success_rate for col in group if (encoder, *col) in cell]
            out.append(float(np.mean(rates)) if rates else float("nan"))
        return out

    for encoder in encoders:
        cells = []
        for task, condition in columns:
            r = cell.get((encoder, task, condition))
            if r is None:
                cells.append("–")
                continue
            low, high = r.success_ci95
            cells.append(f"{r.successes}/{r.episodes} ({low:.2f}–{high:.2f})")
        lines.append(f"| `{encoder}` | " + " | ".join(cells + [f"{m:.2f}" for m in means(encoder)]) + " |")
    for group, members in spec_groups(encoders).items():
        if len(members) < 2:
            continue
        cells = []
        for task, condition in columns:
            rates = [cell[(m, task, condition)].success_rate for m in members if (m, task, condition) in cell]
            cells.append(f"{min(rates):.2f}–{max(rates):.2f}" if rates else "–")
        per_seed = np.array([means(m) for m in members])
        ranges = [f"{lo:.2f}–{hi:.2f}" for lo, hi in zip(np.nanmin(per_seed, 0), np.nanmax(per_seed, 0))]
        seeds = "pretraining seeds" if EncoderSpec.parse(members[0]).label else "seeds"
        lines.append(f"| {group}, {len(members)} {seeds} (range) | " + " | ".join(cells + ranges) + " |")
    return "\n".join(lines)


def seed_range_verdicts(rows: list[BenchmarkRow]) -> list[str]:
    """Each labelled group (a recipe's pretraining seeds) against each random-init group: the mean
    success over clean cells and over changed cells as ranges over seeds, and whether they are apart."""
    def mean_rate(encoder: str, clean: bool) -> float | None:
        rates = [r.success_rate for r in rows if r.encoder == encoder and (r.condition == "clean") == clean]
        return float(np.mean(rates)) if rates else None

    groups = spec_groups(list(dict.fromkeys(r.encoder for r in rows)))
    labelled = {g: m for g, m in groups.items() if EncoderSpec.parse(m[0]).label}
    random_init = {g: m for g, m in groups.items() if not EncoderSpec.parse(m[0]).label}
    lines = []
    for name, members in labelled.items():
        for baseline, seeds in random_init.items():
            parts = []
            for clean, what in ((True, "clean"), (False, "changed")):
                ours = [v for m in members if (v := mean_rate(m, clean)) is not None]
                theirs = [v for m in seeds if (v := mean_rate(m, clean)) is not None]
                if ours and theirs:
                    verdict = "above" if min(ours) > max(theirs) else "below" if max(ours) < min(theirs) else "overlapping"
                    parts.append(f"{what} {min(ours):.2f}–{max(ours):.2f} vs {min(theirs):.2f}–{max(theirs):.2f} ({verdict})")
            if parts:
                lines.append(f"- {name} ({len(members)} seeds) vs {baseline} ({len(seeds)} seeds), mean success: " + "; ".join(parts))
    return lines


def load_rows(folder: str | Path) -> list[BenchmarkRow]:
    """The rows of one run's `<out_dir>/results.json`."""
    path = Path(folder) / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no results.json; expected an --out_dir of the frozen-encoder benchmark")
    return [BenchmarkRow(**{**row, "success_ci95": tuple(row["success_ci95"])}) for row in json.loads(path.read_text())]


def merged_tables(runs: list[list[BenchmarkRow]]) -> str:
    """One `markdown_table` (and its `seed_range_verdicts`) over the rows of several runs
    (`load_rows`), e.g. baselines and pretrained encoders run as separate jobs on the same demos and
    evaluation seeds. Runs that share a task share a table (cells a run did not evaluate show –);
    runs on other tasks get their own."""
    tables: list[tuple[set[str], list[BenchmarkRow]]] = []
    for rows in runs:
        tasks = {r.task for r in rows}
        joined = [i for i, (other, _) in enumerate(tables) if other & tasks]
        for i in reversed(joined[1:]):  # this run links tables that were apart
            other, other_rows = tables.pop(i)
            tables[joined[0]][0].update(other)
            tables[joined[0]][1].extend(other_rows)
        if joined:
            tables[joined[0]][0].update(tasks)
            tables[joined[0]][1].extend(rows)
        else:
            tables.append((tasks, rows))
    parts = []
    for _, rows in tables:
        verdicts = seed_range_verdicts(rows)
        parts += [markdown_table(rows)] + (["\n".join(verdicts)] if verdicts else [])
    return "\n\n".join(parts)


def write_report(config: FrozenBenchmarkConfig, rows: list[BenchmarkRow], command: str, machine: str) -> Path:
    """`<out_dir>/results.md` (the table, the conditions, the settings) and `<out_dir>/results.json` (the rows)."""
    from lerobot_env_vla_dino.visual import condition_table

    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps([asdict(r) for r in rows], indent=2))
    conditions = [BENCHMARK_CONDITIONS[c] for c in dict.fromkeys(r.condition for r in rows)]
    verdicts = "\n".join(seed_range_verdicts(rows))
    report = [
        "# Frozen-encoder benchmark results",
        "",
        markdown_table(rows),
        "",
        *([verdicts, ""] if verdicts else []),
        f"Cells: successes / episodes (95 % Wilson interval); {config.num_demos} demos per task"
        + (f" ({config.demo_varied_fraction:.0%} under random light/colour changes)" if config.demo_varied_fraction else "")
        + f", BC head {HIDDEN}, {config.history}-frame history, {config.num_eval} evaluation episodes per task and condition.",
        "",
        "Evaluation conditions (MuJoCo model edits applied to every evaluation episode):",
        "",
        condition_table(conditions),
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine}, device `{config.device}`",
        "",
        f"Settings: {config}",
    ]
    path = out / "results.md"
    path.write_text("\n".join(report) + "\n")
    return path
