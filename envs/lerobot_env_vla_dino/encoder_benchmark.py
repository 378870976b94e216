"""Encoder benchmark: frozen-feature probes that tell encoders apart, beside their baselines.

    python -m lerobot_env_vla_dino.encoder_benchmark \\
        --encoders='[dino:runs/my_run/export/hf]' --out_dir=outputs/encoder_benchmark

On expert rollouts of a Meta-World task rendered under the benchmark's visual conditions
(`visual.BENCHMARK_CONDITIONS`: clean, two lighting changes, two colour changes, a camera shift;
MuJoCo model edits, not image filters), for every encoder named and its baselines:

- **state**: few-label ridge probes from pooled features (DINO: [CLS, mean patch]) to the
  simulator state (hand, object, goal positions that vary), at each label budget, mean ± spread
  over label draws, R² on held-out episodes;
- **dense**: linear per-patch probes of depth (RMSE, m) and segmentation (robot / object /
  other / background, mIoU) from the frozen patch tokens, labels from MuJoCo's depth and
  segmentation renders;
- each under three splits: `clean` (fit and test on clean episodes), `across` (fit on episodes of
  every condition, test on held-out episodes of every condition) and `heldout` (fit on clean
  episodes, test on the other conditions).

Baselines always in the table: random init of each DINO encoder's architecture (`random_seeds`
seeds, shown as a range), raw pixels (12×12 frame for state; each patch's pixels for dense) and a
ResNet-18 trained from scratch end to end on the same labelled frames (state only: the
learning-from-scratch baseline, with random-shift augmentation as in DrQ; `resnet_splits`,
one fit per budget and draw).
Encoder specs: `dino:<source>` (a `vla_dino.pretrain.export` folder, a transformers folder, a hub id, an
official file), `vit:<size>` (random init of a named size, `@seedN` for the seed), `pixels`;
`label=<spec>` names the row, and specs sharing a label (pretraining seeds) form one row, shown as
the range over them.
Writes `report.md`, `results.json` and `probes.png` (R² vs labels, per split) to `out_dir`.
Frozen-encoder behaviour cloning is `lerobot_env_vla_dino.frozen_benchmark`.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import draccus
import numpy as np
import torch

from lerobot_env_vla_dino.encoder_probes import DinoFrames, EncodedFrames, PixelFrames, Spread, _draw, dense_probes, few_label_r2
from lerobot_env_vla_dino.probes import r2_score
from lerobot_env_vla_dino.scene_data import SceneData, collect_scenes
from lerobot_env_vla_dino.visual import BENCHMARK_CONDITIONS, SEGMENT_CLASSES, condition_table, patch_targets

SPLITS = ("clean", "across", "heldout")
STATE_VARIABLES = ("hand_pos", "obj_pos", "goal_pos")


@dataclass
class EncoderBenchmarkConfig:
    encoders: list[str] = field(default_factory=lambda: ["vit:small-test"])  # see the module docstring
    task: str = "button-press-topdown-v3"  # a Meta-World v3 task (depth/segmentation renders need MuJoCo)
    scenes: str | None = None  # a folder written by scene_data; None: collected into out_dir/scenes
    num_episodes: int = 72  # benchmark episodes, cycled over the conditions (12 per condition)
    image_size: int = 56  # rendered frames = encoder input side (multiple of every encoder's patch size)
    frame_stride: int = 2
    episode_seed: int = 1000  # benchmark episodes use seeds from here (keep them apart from pretraining data)
    budgets: list[int] = field(default_factory=lambda: [25, 50, 150])  # labelled frames for state probes (≤ ~199 at 72 episodes)
    dense_budgets: list[int] = field(default_factory=lambda: [10, 50])  # labelled frames (all their patches) for dense probes
    draws: int = 5  # label draws per budget
    random_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # random-init baselines per DINO architecture
    pixel_patch: int = 7  # patch side of the raw-pixel dense baseline
    include_pixels: bool = True
    resnet_splits: list[str] = field(default_factory=lambda: ["clean", "across"])  # [] leaves ResNet-18 out
    resnet_draws: int = 1  # label draws per budget for ResNet-18 (each one trains a network)
    resnet_steps: int = 300  # Adam steps of batch 32 per fit
    resnet_budgets: list[int] | None = None  # None: every state budget
    device: str = "cpu"
    out_dir: str = "outputs/encoder_benchmark"
    seed: int = 0


# ---------------------------------------------------------------- encoders
def _seeded(spec: str) -> tuple[str, int | None]:
    base, _, seed = spec.partition("@seed")
    if seed and not seed.isdigit():
        raise ValueError(f"encoder spec {spec!r}: expected '@seed<N>' with an integer N")
    return base, int(seed) if seed else None


def build_encoder(spec: str, device: str = "cpu") -> DinoFrames | PixelFrames:
    """One encoder spec → a frame encoder (see the module docstring for the forms)."""
    from vla_dino.encoder import DinoEncoder

    base, seed = _seeded(spec)
    kind, _, source = base.partition(":")
    if kind == "pixels" and not source:
        return PixelFrames(patch_size=7, name=spec)
    if kind == "vit" and source:
        torch.manual_seed(0 if seed is None else seed)
        return DinoFrames(DinoEncoder.from_size(source).to(device), spec)
    if kind == "dino" and source:
        encoder = DinoEncoder.from_pretrained(source)
        if seed is not None:  # random init of the same architecture
            torch.manual_seed(seed)
            encoder = DinoEncoder(copy.deepcopy(encoder.config))
        return DinoFrames(encoder.to(device), spec)
    raise ValueError(f"encoder spec {spec!r}; expected dino:<source>, vit:<size>[@seedN] or pixels")


def baseline_specs(specs: list[str], random_seeds: list[int], include_pixels: bool) -> list[tuple[str, str]]:
    """(spec, group) for every encoder and its baselines; the group names the table row.

    `label=spec` names the row; encoders sharing a label (e.g. one recipe pretrained with three
    seeds) form one row shown as a range, and get one set of random-init baselines (the first's
    architecture)."""
    rows: list[tuple[str, str]] = []
    for entry in specs:
        label, _, spec = entry.partition("=") if "=" in entry.split(":", 1)[0] else ("", "", entry)
        group = label or spec
        first_of_group = all(g != group for _, g in rows)
        rows.append((spec, group))
        base, seed = _seeded(spec)
        if base.startswith("dino:") and seed is None and first_of_group:
            rows += [(f"{base}@seed{s}", f"random init of {label or base.removeprefix('dino:')}") for s in random_seeds]
    if include_pixels and "pixels" not in [spec for spec, _ in rows]:
        rows.append(("pixels", "pixels"))
    return rows


# ---------------------------------------------------------------- ResNet-18 from scratch
def resnet_state_r2(
    images: np.ndarray, targets: list[np.ndarray], train_rows: np.ndarray, test_rows: np.ndarray, budget: int,
    steps: int, seed: int, device: str = "cpu",
) -> float:
    """Mean R² over `targets` on `test_rows` of a torchvision ResNet-18 (random init) trained end to end
    with MSE on the standardised targets of `budget` frames drawn from `train_rows` (Adam 1e-3,
    batch 32, random shifts of ±4 px)."""
    from torchvision.models import resnet18

    from vla_dino.encoder import IMAGENET_MEAN, IMAGENET_STD

    rng = np.random.default_rng(seed)
    rows = _draw(train_rows, budget, rng, "(frames)")
    y = np.concatenate([np.asarray(t, np.float64).reshape(len(images), -1) for t in targets], axis=1)
    widths = [np.asarray(t).reshape(len(images), -1).shape[1] for t in targets]
    mean, std = y[rows].mean(0), y[rows].std(0) + 1e-6
    torch.manual_seed(seed)
    net = resnet18(weights=None, num_classes=y.shape[1]).to(device)
    norm_mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    norm_std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

    def pixels(batch: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(device).permute(0, 3, 1, 2).float() / 255.0
        return (x - norm_mean) / norm_std

    x_train = pixels(images[rows])
    y_train = torch.as_tensor((y[rows] - mean) / std, dtype=torch.float32, device=device)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(steps):
        pick = torch.randint(len(rows), (min(32, len(rows)),), generator=generator)
        x = torch.nn.functional.pad(x_train[pick], (4, 4, 4, 4), mode="replicate")
        dy, dx = torch.randint(9, (2,), generator=generator).tolist()
        x = x[..., dy : dy + x_train.shape[-2], dx : dx + x_train.shape[-1]]
        loss = torch.nn.functional.mse_loss(net(x), y_train[pick])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.eval()
    with torch.no_grad():
        predicted = torch.cat([net(pixels(images[test_rows[i : i + 128]])) for i in range(0, len(test_rows), 128)])
    predicted = torch.as_tensor(predicted.double().cpu().numpy() * std + mean)
    truth, reference = torch.as_tensor(y[test_rows]), torch.as_tensor(y[rows].mean(0))
    scores, start = [], 0
    for width in widths:
        part = slice(start, start + width)
        scores.append(r2_score(truth[:, part], predicted[:, part], reference[part]))
        start += width
    return float(np.mean(scores))


# ---------------------------------------------------------------- splits
def split_rows(scenes: SceneData) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(train rows, test rows) per split; within each condition, alternate episodes are held out."""
    clean = next((i for i, c in enumerate(scenes.conditions) if c.is_clean), None)
    if clean is None:
        raise ValueError(f"the scenes have no clean episodes (conditions {[c.name for c in scenes.conditions]}); "
                         "collect them with the benchmark's conditions, clean included")
    held = np.zeros(len(scenes), dtype=bool)
    for condition in np.unique(scenes.condition):
        episodes = np.unique(scenes.episode[scenes.condition == condition])
        held |= np.isin(scenes.episode, episodes[1::2])
    is_clean = scenes.condition == clean
    rows = lambda mask: np.flatnonzero(mask)  # noqa: E731
    splits = {
        "clean": (rows(is_clean & ~held), rows(is_clean & held)),
        "across": (rows(~held), rows(held)),
        "heldout": (rows(is_clean & ~held), rows(~is_clean & held)),
    }
    if len(scenes.conditions) < 2:
        splits = {"clean": splits["clean"]}
    return splits


# ---------------------------------------------------------------- one encoder
@dataclass
class EncoderScores:
    spec: str
    group: str
    feature_dim: int
    state: dict[str, dict[int, Spread]]  # split → budget → mean R² over state variables (absent: not run)
    dense: dict[str, dict[int, dict[str, Spread]]]  # split → budget → {depth_rmse, depth_r2, segmentation_miou}
    seconds: float


def state_variables(scenes: SceneData) -> list[str]:
    """The benchmark's state variables that vary in these scenes (R² is undefined for a constant)."""
    return [v for v in STATE_VARIABLES if v in scenes.states and np.ptp(scenes.states[v], axis=0).max() > 1e-6]


def evaluate_resnet(scenes: SceneData, splits: dict[str, tuple[np.ndarray, np.ndarray]], config: EncoderBenchmarkConfig) -> EncoderScores:
    start = time.perf_counter()
    targets = [scenes.states[v] for v in state_variables(scenes)]
    state = {}
    for split in [s for s in config.resnet_splits if s in splits]:
        train, test = splits[split]
        state[split] = {
            budget: Spread.of([
                resnet_state_r2(scenes.images, targets, train, test, budget, config.resnet_steps, config.seed + draw, config.device)
                for draw in range(config.resnet_draws)
            ])
            for budget in (config.resnet_budgets or config.budgets)
        }
    return EncoderScores("resnet18_scratch", "ResNet-18 from scratch (end to end)", 512, state, {}, time.perf_counter() - start)


def evaluate_encoder(
    encoded: EncodedFrames, scenes: SceneData, splits: dict[str, tuple[np.ndarray, np.ndarray]],
    config: EncoderBenchmarkConfig, spec: str, group: str,
) -> EncoderScores:
    start = time.perf_counter()
    variables = state_variables(scenes)
    state: dict[str, dict[int, Spread]] = {}
    dense: dict[str, dict[int, dict[str, Spread]]] = {}
    if encoded.patches is not None:
        depth, classes = patch_targets(scenes.depth, scenes.segmentation, encoded.patch_size)
    for split, (train, test) in splits.items():
        state[split] = {}
        for budget in config.budgets:
            per_variable = [
                few_label_r2(encoded.pooled, scenes.states[v], train, test, budget, config.draws, config.seed)
                for v in variables
            ]
            state[split][budget] = Spread.of(list(np.mean([s.values for s in per_variable], axis=0)))
        if encoded.patches is None:
            continue
        dense[split] = {}
        for budget in config.dense_budgets:
            scores = dense_probes(
                encoded.patches, depth, classes, len(SEGMENT_CLASSES), train, test, budget, min(config.draws, 3), config.seed
            )
            dense[split][budget] = {k: v for k, v in vars(scores).items()}
    return EncoderScores(spec, group, int(encoded.pooled.shape[1]), state, dense, time.perf_counter() - start)


def check_budgets(config: EncoderBenchmarkConfig, splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    smallest = min(len(train) for train, _ in splits.values())
    too_big = [b for b in [*config.budgets, *config.dense_budgets] if b > smallest]
    if too_big:
        raise ValueError(
            f"--budgets/--dense_budgets {too_big} exceed the {smallest} training frames of the smallest split; "
            f"lower them or raise --num_episodes ({config.num_episodes})"
        )


# ---------------------------------------------------------------- report
def _cell(values: list[Spread]) -> str:
    """One encoder: mean ± spread over draws; a baseline group over seeds: min–max of the seed means."""
    if len(values) == 1:
        return f"{values[0].mean:.3f} ± {values[0].std:.3f}"
    means = [v.mean for v in values]
    return f"{min(means):.3f}–{max(means):.3f}"


def markdown_tables(results: list[EncoderScores], config: EncoderBenchmarkConfig) -> str:
    groups = list(dict.fromkeys(r.group for r in results))
    by_group = {g: [r for r in results if r.group == g] for g in groups}
    splits = list(results[0].state)
    cell = lambda rows, pick: _cell([pick(r) for r in rows]) if all(pick(r) is not None for r in rows) else "–"  # noqa: E731
    lines = ["### State probes: mean R² over " + ", ".join(STATE_VARIABLES) + " (held-out episodes; higher is better)", ""]
    header = [f"{s} @{b}" for s in splits for b in config.budgets]
    lines += ["| encoder | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
    for group, rows in by_group.items():
        cells = [cell(rows, lambda r: r.state.get(s, {}).get(b)) for s in splits for b in config.budgets]
        lines.append(f"| {group} | " + " | ".join(cells) + " |")
    dense_rows = {g: [r for r in rows if r.dense] for g, rows in by_group.items()}
    if any(dense_rows.values()):
        for metric, title in (("segmentation_miou", "Segmentation mIoU (higher is better)"), ("depth_rmse", "Depth RMSE in m (lower is better)")):
            lines += ["", f"### Dense probes: {title}", ""]
            header = [f"{s} @{b}" for s in splits for b in config.dense_budgets]
            lines += ["| encoder | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
            for group, rows in dense_rows.items():
                if rows:
                    cells = [cell(rows, lambda r: r.dense[s][b][metric]) for s in splits for b in config.dense_budgets]
                    lines.append(f"| {group} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: list[EncoderScores], config: EncoderBenchmarkConfig, path: Path, floor: float = -1.0) -> Path:
    """State R² against labelled frames per split; seed groups as a band (min–max). Values below
    `floor` (far-negative R² of probes extrapolating under held-out conditions) are drawn at it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = list(results[0].state)
    figure, axes = plt.subplots(1, len(splits), figsize=(4.2 * len(splits), 3.6), squeeze=False)
    groups = list(dict.fromkeys(r.group for r in results))
    colours = {group: f"C{i}" for i, group in enumerate(groups)}
    for ax, split in zip(axes[0], splits):
        for group in groups:
            rows = [r for r in results if r.group == group and split in r.state]
            if not rows:
                continue
            budgets = list(rows[0].state[split])  # ResNet-18 may run at fewer budgets
            means = np.maximum(np.array([[r.state[split][b].mean for b in budgets] for r in rows]), floor)
            ax.plot(budgets, means.mean(0), marker="o", color=colours[group], label=group[:40])
            if len(rows) > 1:
                ax.fill_between(budgets, means.min(0), means.max(0), color=colours[group], alpha=0.2)
        ax.set_xscale("log")
        ax.set_xticks(config.budgets, [str(b) for b in config.budgets])
        ax.minorticks_off()
        clipped = any(r.state[split][b].mean < floor for r in results if split in r.state for b in r.state[split])
        ax.set_xlabel("labelled frames")
        ax.set_title(f"state R², {split}" + (f" (below {floor:g} drawn at {floor:g})" if clipped else ""))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("mean R² (held-out episodes)")
    handles = [plt.Line2D([], [], color=colours[g], marker="o", label=g[:40]) for g in groups]
    figure.legend(handles=handles, loc="lower center", ncol=min(len(groups), 4), fontsize=7, frameon=False)
    figure.tight_layout(rect=(0, 0.1, 1, 1))
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def load_or_collect_scenes(config: EncoderBenchmarkConfig) -> SceneData:
    if config.scenes:
        return SceneData.load(config.scenes)
    folder = Path(config.out_dir) / "scenes"
    if (folder / "scene.npz").is_file():
        scenes = SceneData.load(folder)
        if scenes.task == config.task and scenes.images.shape[1] == config.image_size:
            return scenes
    scenes = collect_scenes(
        config.task, config.num_episodes, list(BENCHMARK_CONDITIONS.values()), image_size=config.image_size,
        seed=config.episode_seed, frame_stride=config.frame_stride,
    )
    scenes.save(folder)
    return scenes


def run_encoder_benchmark(config: EncoderBenchmarkConfig) -> list[EncoderScores]:
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    unknown = [s for s in config.resnet_splits if s not in SPLITS]
    if unknown:
        raise ValueError(f"--resnet_splits {unknown} unknown; expected names from {list(SPLITS)}")
    specs = baseline_specs(config.encoders, config.random_seeds, config.include_pixels)
    encoders = {spec: build_encoder(spec, config.device) for spec, _ in specs}  # bad specs fail before any work
    scenes = load_or_collect_scenes(config)
    splits = split_rows(scenes)
    check_budgets(config, splits)
    results = []
    for spec, group in specs:
        encoded = encoders[spec](scenes.images)
        results.append(evaluate_encoder(encoded, scenes, splits, config, spec, group))
        best = results[-1].state["clean"][config.budgets[-1]]
        print(f"{spec:>50}: clean state R² @{config.budgets[-1]} = {best.mean:.3f}", flush=True)
    if config.resnet_splits:
        results.append(evaluate_resnet(scenes, splits, config))
        print(f"{'resnet18_scratch':>50}: " + ", ".join(
            f"{s} R² @{b} = {v.mean:.3f}" for s, per in results[-1].state.items() for b, v in per.items()), flush=True)
    (out / "results.json").write_text(json.dumps([asdict(r) for r in results], indent=2))
    plot(results, config, out / "probes.png")
    report = [
        f"# Encoder benchmark: {scenes.task}, {len(scenes)} frames of {len(np.unique(scenes.episode))} episodes",
        "",
        "Frozen features, linear probes, held-out episodes. Single encoders: mean ± std over "
        f"{config.draws} label draws; random-init baselines: range of the seed means over seeds {config.random_seeds}. "
        "Splits: clean (fit/test clean), across (fit/test every condition), heldout (fit clean, test the changed conditions).",
        "",
        markdown_tables(results, config),
        "",
        "![state probes](probes.png)",
        "",
        "### Visual conditions (MuJoCo model edits)",
        "",
        condition_table(scenes.conditions),
        "",
        f"Settings: `{config}`",
    ]
    (out / "report.md").write_text("\n".join(report) + "\n")
    return results


if __name__ == "__main__":
    run_encoder_benchmark(draccus.parse(EncoderBenchmarkConfig))
