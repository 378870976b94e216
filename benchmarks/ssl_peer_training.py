"""Does it learn? Our DINOv2 pretraining beside a peer implementation, same everything else.

Trains the SAME tiny ViT (one random init, deep-copied) on the SAME frames with the SAME crops and
masks in the SAME batch order for the SAME steps, three ways:

  (a) ours, `vla_dino.ssl.SSLModel` with softmax centring (loss.centering=softmax),
  (b) ours with Sinkhorn-Knopp targets (loss.centering=sinkhorn),
  (c) the peer: lightly 1.6's DINOLoss / IBOTPatchLoss / KoLeoLoss / DINOv2ProjectionHead /
      update_momentum around the same transformers Dinov2Model, written like lightly's
      examples/pytorch/dinov2.py (`benchmarks/lightly_peer.py`, shared with bench_ssl_step.py),
      on our schedules: lr warm-up + cosine, weight decay, teacher-temperature warm-up, EMA
      momentum and last-layer freeze from `vla_dino.ssl.schedules.SSLSchedules`; same head sizes,
      prototypes, temperatures, loss weights and clipping; its head starts from our head's weights.

The recipe is a pretraining preset (default `demo_sim`) plus `--set key=value` overrides, read with
`vla_dino.pretrain.config.load_config` as `python -m vla_dino.pretrain` does; frames come from
`--frames` through `vla_dino.data.load_frame_tensor` (loaded once into memory) and crops from
`MultiCropAugmentation.from_config`, re-seeded per step so all three see identical crops.

Logged every step: total loss, DINO CE, iBOT CE, KoLeo (unweighted, summed over the two global
crops), teacher target entropy (softmax or Sinkhorn targets of the teacher's global crops; for
lightly softmax((t − c)/τ_t) with its DINOLoss centre c) and the student–teacher KL of the global
crops (mean H(t_other crop, s) − H(t)). At the end every teacher backbone is exported as a
transformers folder (`--out/exports/<name>`); with `--scenes` (a folder written by
`lerobot_env_vla_dino.scene_data`) the frozen probes of
`envs/lerobot_env_vla_dino/encoder_benchmark.py` run on the exports, the random-init baseline of
the same architecture (3 seeds) and raw pixels. Writes `report.md`, `results.json` and
`curves.png` (and the probe report under `--out/probes`) to `--out`, and prints the table.

Needs lightly (`pip install --no-deps lightly` is enough: only lightly.loss / lightly.models are
imported); the project itself does not depend on it. MUJOCO_GL=egl for the probes' scene loading.

    OMP_NUM_THREADS=1 python benchmarks/ssl_peer_training.py --frames /path/frames --steps 20 --out /tmp/peer
    OMP_NUM_THREADS=1 MUJOCO_GL=egl python benchmarks/ssl_peer_training.py --frames /path/frames \\
        --scenes /path/bench_scenes --steps 600 --batch 32 --out outputs/ssl_peer
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vla_dino.configs.loader import parse_value
from vla_dino.data import load_frame_tensor
from vla_dino.encoder import DinoEncoder
from vla_dino.pretrain.config import PretrainConfig, load_config, preset_path
from vla_dino.ssl import MultiCropAugmentation, MultiCropBatch, SSLModel, SSLTrainer
from vla_dino.ssl.heads import DinoHead

from bench_ssl_step import OursStep  # benchmarks/bench_ssl_step.py (this script's folder)
from lightly_peer import LightlyStep  # benchmarks/lightly_peer.py (this script's folder)
from machine import machine_name  # benchmarks/machine.py (this script's folder)

IMPLEMENTATIONS = {
    "ours_softmax": "ours (softmax centering)",
    "ours_sinkhorn": "ours (Sinkhorn-Knopp)",
    "lightly": "lightly 1.6 (softmax centering)",
}
METRICS = ("loss", "dino", "ibot", "koleo", "teacher_entropy", "dino_kl")


# ---------------------------------------------------------------- set-up
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", required=True, help="folder of frames (anything vla_dino.data.discover_sources reads)")
    parser.add_argument("--scenes", default=None, help="benchmark scene folder (scene.npz): run the frozen probes on the exports")
    parser.add_argument("--out", default="outputs/ssl_peer", help="output folder (report.md, results.json, curves.png, exports/)")
    parser.add_argument("--preset", default="demo_sim", help="pretraining preset name (vla_dino/configs/pretrain) or a YAML path")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the preset's train.steps)")
    parser.add_argument("--batch", type=int, default=None, help="images per step (default: the preset's data.batch_size)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted override of the preset, e.g. --set ssl.heads.num_prototypes=256 (repeatable)")
    parser.add_argument("--only", default=",".join(IMPLEMENTATIONS), help=f"comma list out of {','.join(IMPLEMENTATIONS)}")
    parser.add_argument("--seed", type=int, default=None, help="init / batch-order / crop seed (default: the preset's train.seed)")
    parser.add_argument("--probe-seeds", default="0,1,2", help="random-init baseline seeds for the probes")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse a run already in --out/runs/<name>.json (same recipe, frames, steps, seed) instead of "
                             "training it again: lets the three runs train in parallel processes (--only one each, "
                             "no --scenes), then one call with --reuse --scenes merges them and runs the probes")
    parser.add_argument("--resnet", action="store_true", help="also the benchmark's ResNet-18-from-scratch baseline (slow on CPU)")
    parser.add_argument("--budgets", default="25,100", help="labelled frames for the state probes")
    parser.add_argument("--dense-budgets", default="10,50", help="labelled frames for the dense probes")
    args = parser.parse_args(argv)
    unknown = set(args.only.split(",")) - set(IMPLEMENTATIONS)
    if unknown:
        parser.error(f"--only: unknown implementation(s) {sorted(unknown)}; expected some of {list(IMPLEMENTATIONS)}")
    for item in args.overrides:
        if "=" not in item:
            parser.error(f"--set {item!r}: expected KEY=VALUE")
    return args


def load_recipe(args: argparse.Namespace) -> PretrainConfig:
    overrides: dict[str, Any] = {}
    for item in args.overrides:
        key, value = item.split("=", 1)
        overrides[key] = parse_value(value)
    if args.steps is not None:
        overrides["train.steps"] = args.steps
    if args.batch is not None:
        overrides["data.batch_size"] = args.batch
    if args.seed is not None:
        overrides["train.seed"] = args.seed
    path = Path(args.preset) if args.preset.endswith((".yaml", ".yml")) else preset_path(args.preset)
    config = load_config(path, overrides)
    if config.ssl.optim.batch_size is None:  # pin the lr-scaling batch as the training loop does
        config.ssl = dataclasses.replace(config.ssl, optim=dataclasses.replace(config.ssl.optim, batch_size=config.data.batch_size))
    return config


def batch_order(num_frames: int, batch: int, steps: int, seed: int) -> list[torch.Tensor]:
    """Frame indices per step: seeded permutations per epoch, incomplete batches dropped."""
    if num_frames < batch:
        raise ValueError(f"--batch {batch} is larger than the {num_frames} frames in --frames")
    generator = torch.Generator().manual_seed(seed)
    order: list[torch.Tensor] = []
    while len(order) < steps:
        permutation = torch.randperm(num_frames, generator=generator)
        order += list(permutation[: num_frames // batch * batch].view(-1, batch))
    return order[:steps]


def crops_for_step(augment: MultiCropAugmentation, frames: torch.Tensor, index: torch.Tensor, seed: int, step: int) -> MultiCropBatch:
    torch.manual_seed(seed * 1_000_003 + step)  # crops, photometric draws and masks follow torch's seed
    return augment(frames[index])


# ---------------------------------------------------------------- the three runs
class OursRun(OursStep):
    """`SSLModel` stepped by vla_dino/pretrain/train.py's `SSLTrainer` (fp32, no autocast), as in
    bench_ssl_step.py."""

    def __init__(self, encoder: DinoEncoder, config: PretrainConfig, centering: str, seed: int) -> None:
        ssl = copy.deepcopy(config.ssl)
        ssl.loss.centering = centering
        torch.manual_seed(seed)  # the heads' init: the same draws as `initial_head`
        self.trainer = SSLTrainer(SSLModel(ssl, encoder, total_steps=config.train.steps).train())

    def __call__(self, batch: MultiCropBatch, step: int) -> dict[str, float]:
        out = self.step(batch, step)
        m = out.metrics
        return {
            "loss": float(out.loss.detach()), "dino": float(m["dino_local"] + m["dino_global"]), "ibot": float(m.get("ibot", 0.0)),
            "koleo": float(m.get("koleo", 0.0)), "teacher_entropy": float(m["teacher_entropy"]), "dino_kl": float(m["dino_kl"]),
        }

    def teacher(self) -> DinoEncoder:
        return self.trainer.model.teacher_backbone


class PeerRun:
    def __init__(self, encoder: DinoEncoder, config: PretrainConfig, seed: int) -> None:
        self.step_fn = LightlyStep(encoder, config.ssl, config.train.steps, init_head=initial_head(encoder, config, seed))

    def __call__(self, batch: MultiCropBatch, step: int) -> dict[str, float]:
        self.step_fn(batch, step)
        return dict(self.step_fn.last_metrics)

    def teacher(self) -> DinoEncoder:
        model = self.step_fn.teacher_backbone
        return DinoEncoder(model.config, model=model)


def initial_head(encoder: DinoEncoder, config: PretrainConfig, seed: int) -> DinoHead:
    """The DINO head `SSLModel` builds first after `torch.manual_seed(seed)`."""
    heads = config.ssl.heads
    torch.manual_seed(seed)
    return DinoHead(encoder.hidden_size, heads.num_prototypes, heads.hidden_dim, heads.bottleneck_dim, heads.num_layers)


def train_one(name: str, base: DinoEncoder, config: PretrainConfig, frames: torch.Tensor, order: list[torch.Tensor],
              seed: int) -> tuple[list[dict[str, float]], DinoEncoder, float]:
    encoder = copy.deepcopy(base)
    run = PeerRun(encoder, config, seed) if name == "lightly" else OursRun(encoder, config, name.removeprefix("ours_"), seed)
    augment = MultiCropAugmentation.from_config(config.ssl, patch_size=base.patch_size)
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    every = max(1, len(order) // 10)
    for step, index in enumerate(order):
        metrics = run(crops_for_step(augment, frames, index, seed, step), step)
        history.append(metrics)
        if not all(math.isfinite(v) for v in metrics.values()):
            raise FloatingPointError(f"{name}: non-finite metrics at step {step}: {metrics}")
        if step % every == 0 or step == len(order) - 1:
            print(f"  {name:14s} step {step:5d}  " + "  ".join(f"{k} {metrics[k]:.4f}" for k in METRICS), flush=True)
    return history, run.teacher(), time.perf_counter() - start


# ---------------------------------------------------------------- probes
def run_probes(exports: dict[str, Path], args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Frozen probes of encoder_benchmark.py on the exports + random init (seeds) + pixels."""
    root = Path(__file__).resolve().parents[1] / "envs"
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from lerobot_env_vla_dino import encoder_benchmark as eb

    # Every export has the same architecture: one random-init group (not one per export).
    original = eb.baseline_specs

    def one_random_group(specs: list[str], seeds: list[int], pixels: bool) -> list[tuple[str, str]]:
        rows = original(specs, seeds, pixels)
        first = next(g for s, g in rows if g.startswith("random init of "))
        return [(s, "random init (same architecture)" if g == first else g) for s, g in rows
                if not g.startswith("random init of ") or g == first]

    eb.baseline_specs = one_random_group
    try:
        config = eb.EncoderBenchmarkConfig(
            encoders=[f"dino:{path}" for path in exports.values()],
            random_seeds=[int(s) for s in args.probe_seeds.split(",")],
            scenes=args.scenes,
            budgets=[int(b) for b in args.budgets.split(",")],
            dense_budgets=[int(b) for b in args.dense_budgets.split(",")],
            out_dir=str(out / "probes"),
        )
        if hasattr(config, "resnet_splits") and not args.resnet:
            config.resnet_splits = []  # ResNet-18 trained end to end: minutes per fit on CPU, opt in with --resnet
        results = eb.run_encoder_benchmark(config)
    finally:
        eb.baseline_specs = original
    names = {f"dino:{path}": name for name, path in exports.items()}
    return {"config": dataclasses.asdict(config), "results": results, "names": names,
            "tables": eb.markdown_tables(results, config)}


# ---------------------------------------------------------------- report
def window_mean(history: list[dict[str, float]], key: str, at: float, width: int = 10) -> float:
    """Mean of `key` over `width` steps around fraction `at` of the run (start / middle / end)."""
    n = len(history)
    centre = min(n - 1, int(at * (n - 1)))
    lo = max(0, min(centre - width // 2, n - width))
    return float(np.mean([h[key] for h in history[lo: lo + width]]))


def summary_rows(histories: dict[str, list[dict[str, float]]], log_k: float) -> list[dict[str, float]]:
    rows = []
    for name, history in histories.items():
        rows.append({
            "name": name,
            "loss_start": window_mean(history, "loss", 0.0), "loss_end": window_mean(history, "loss", 1.0),
            "dino_end": window_mean(history, "dino", 1.0), "ibot_end": window_mean(history, "ibot", 1.0),
            "koleo_end": window_mean(history, "koleo", 1.0),
            **{f"entropy_{where}": window_mean(history, "teacher_entropy", at) / log_k
               for where, at in (("start", 0.0), ("middle", 0.5), ("end", 1.0))},
            "kl_middle": window_mean(history, "dino_kl", 0.5), "kl_end": window_mean(history, "dino_kl", 1.0),
        })
    return rows


def probe_cells(probes: dict[str, Any] | None, name: str) -> dict[str, str]:
    """A few headline probe numbers for one row (a baseline group: min–max over seeds)."""
    if probes is None:
        return {}
    config = probes["config"]
    budgets, dense = config["budgets"], config["dense_budgets"]
    rows = [r for r in probes["results"] if probes["names"].get(r.spec, r.group) == name]
    if not rows:
        return {}

    def cell(values: list[Any]) -> str:
        means = [v.mean for v in values]
        return f"{means[0]:.3f}" if len(means) == 1 else f"{min(means):.3f}–{max(means):.3f}"

    splits = list(rows[0].state)
    cells = {f"R² {s} @{b}": cell([r.state[s][b] for r in rows]) for s in splits for b in budgets}
    if rows[0].dense:
        for s in splits:
            cells[f"mIoU {s} @{dense[-1]}"] = cell([r.dense[s][dense[-1]]["segmentation_miou"] for r in rows])
        cells[f"depth RMSE across @{dense[-1]}"] = cell([r.dense["across"][dense[-1]]["depth_rmse"] for r in rows]) \
            if "across" in rows[0].dense else ""
    return cells


def markdown(rows: list[dict[str, float]], probes: dict[str, Any] | None, log_k: float) -> str:
    header = ["implementation", "loss start → end", "DINO / iBOT / KoLeo end", "H(t)/log K start / mid / end", "KL mid / end"]
    probe_keys: list[str] = []
    if probes is not None:
        probe_keys = list(probe_cells(probes, rows[0]["name"]))
    lines = ["| " + " | ".join(header + probe_keys) + " |", "|---" * (len(header) + len(probe_keys)) + "|"]
    for r in rows:
        cells = [
            IMPLEMENTATIONS[r["name"]],
            f"{r['loss_start']:.3f} → {r['loss_end']:.3f}",
            f"{r['dino_end']:.3f} / {r['ibot_end']:.3f} / {r['koleo_end']:.3f}",
            f"{r['entropy_start']:.3f} / {r['entropy_middle']:.3f} / {r['entropy_end']:.3f}",
            f"{r['kl_middle']:.4f} / {r['kl_end']:.4f}",
        ]
        probe = probe_cells(probes, r["name"])
        lines.append("| " + " | ".join(cells + [probe.get(k, "") for k in probe_keys]) + " |")
    if probes is not None:
        for group in ("random init (same architecture)", "pixels", "ResNet-18 from scratch (end to end)"):
            probe = probe_cells(probes, group)
            if probe:
                lines.append("| " + " | ".join([group, "", "", "", ""] + [probe.get(k, "") for k in probe_keys]) + " |")
    lines.append("")
    lines.append(f"log K = {log_k:.3f}. Start / middle / end: means over 10 steps there. KL: global crops, nats. "
                 "Probes: R² of few-label state probes (held-out episodes, mean over label draws; random init: "
                 "range over seeds), segmentation mIoU and depth RMSE (m) of linear patch probes.")
    return "\n".join(lines)


def plot(histories: dict[str, list[dict[str, float]]], log_k: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("loss", "total loss", 1.0), ("dino", "DINO CE", 1.0), ("ibot", "iBOT CE", 1.0),
              ("teacher_entropy", "teacher entropy / log K", log_k), ("dino_kl", "student–teacher KL (nats)", 1.0),
              ("koleo", "KoLeo", 1.0)]
    figure, axes = plt.subplots(2, 3, figsize=(13, 6.5))
    for ax, (key, title, scale) in zip(axes.flat, panels):
        for name, history in histories.items():
            values = np.array([h[key] for h in history]) / scale
            smooth = np.convolve(values, np.ones(10) / 10, mode="valid") if len(values) >= 10 else values
            line = ax.plot(values, alpha=0.25, linewidth=0.8)[0]
            ax.plot(np.arange(len(smooth)) + (len(values) - len(smooth)), smooth, color=line.get_color(), label=IMPLEMENTATIONS[name])
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if key == "dino_kl":
            ax.set_yscale("symlog", linthresh=1e-3)
    axes.flat[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    config = load_recipe(args)
    if config.train.device != "cpu":
        print(f"note: the preset's train.device {config.train.device!r} is ignored; this benchmark runs on CPU", flush=True)
    seed, steps, batch = config.train.seed, config.train.steps, config.data.batch_size
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = machine_name("cpu")
    started = time.strftime("%Y-%m-%d %H:%M")

    frames = load_frame_tensor(args.frames, config.data.frame_size)  # all of them, read once, shared by all runs
    order = batch_order(len(frames), batch, steps, seed)
    torch.manual_seed(seed)
    base = DinoEncoder.from_source(config.model.init, **dict(config.model.encoder_overrides))
    log_k = math.log(config.ssl.heads.num_prototypes)
    print(f"{len(frames)} frames from {args.frames}; {steps} steps × batch {batch}; encoder {config.model.init} "
          f"{dict(config.model.encoder_overrides)}; K={config.ssl.heads.num_prototypes}; on {machine}", flush=True)

    histories: dict[str, list[dict[str, float]]] = {}
    seconds: dict[str, float] = {}
    exports: dict[str, Path] = {}
    # what decides a run (log / checkpoint / export settings do not; new fields there must not force a retrain)
    recipe = {k: v for k, v in config.to_dict().items() if k in ("model", "data", "train", "ssl")}
    fingerprint = {"config": recipe, "frames": len(frames), "frames_folder": str(args.frames)}
    for name in args.only.split(","):
        saved = out / "runs" / f"{name}.json"
        export = out / "exports" / name
        if args.reuse and saved.is_file() and (export / "config.json").is_file():
            run = json.loads(saved.read_text())
            saved_recipe = {k: v for k, v in run["fingerprint"]["config"].items() if k in recipe}
            if {**run["fingerprint"], "config": saved_recipe} == json.loads(json.dumps(fingerprint, default=str)):
                print(f"{IMPLEMENTATIONS[name]}: reusing {saved}", flush=True)
                histories[name], seconds[name], exports[name] = run["history"], run["seconds"], export
                continue
            print(f"{IMPLEMENTATIONS[name]}: {saved} is for another recipe / frame set: training again", flush=True)
        print(f"{IMPLEMENTATIONS[name]}:", flush=True)
        histories[name], teacher, seconds[name] = train_one(name, base, config, frames, order, seed)
        exports[name] = DinoEncoder(teacher.config, model=copy.deepcopy(teacher.model)).save_pretrained(export)
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps({"fingerprint": fingerprint, "seconds": seconds[name], "history": histories[name]}, default=str))

    probes = run_probes(exports, args, out) if args.scenes else None
    rows = summary_rows(histories, log_k)
    table = markdown(rows, probes, log_k)
    command = "python " + " ".join([sys.argv[0], *sys.argv[1:]]) if argv is None else "main(" + repr(argv) + ")"
    report = [
        "# Pretraining against a peer implementation (lightly)", "",
        f"{started}, {machine}. {len(frames)} frames from `{args.frames}`, {steps} steps × batch {batch}, "
        f"preset `{args.preset}` + {args.overrides or 'no overrides'}, seed {seed}; "
        f"seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()) + ".", "",
        f"`{command}`", "", table, "", "![curves](curves.png)", "",
    ]
    if probes is not None:
        report += ["## Probe tables", "", probes["tables"], ""]
    (out / "report.md").write_text("\n".join(report))
    plot(histories, log_k, out / "curves.png")
    payload = {
        "machine": machine, "started": started, "command": command, "args": vars(args), "config": config.to_dict(),
        "frames": len(frames), "seconds": seconds, "log_k": log_k, "summary": rows, "history": histories,
        "exports": {k: str(v) for k, v in exports.items()},
        "probes": None if probes is None else {"config": probes["config"], "names": probes["names"],
                                               "results": [dataclasses.asdict(r) for r in probes["results"]]},
    }
    (out / "results.json").write_text(json.dumps(payload, indent=1, default=str))
    print()
    print(table)
    print(f"\nwrote {out / 'report.md'}, {out / 'results.json'}, {out / 'curves.png'}")


if __name__ == "__main__":
    main()
