"""The main job end to end, on embedded defaults: simulator frames → pretrained encoder → policy.

    python -m lerobot_env_vla_dino.demo                    # CPU, about 10 minutes on 2 cores, writes outputs/demo/report.md
    python -m lerobot_env_vla_dino.demo --restart          # start over instead of reusing earlier stages
    python -m lerobot_env_vla_dino.demo --help

Stages (each writes its folder under --out-dir and is skipped on a second run when its
`stage.json` exists; each prints the stand-alone command that does the same with your data):

1. collect   the robot's "logs" (expert episodes, half of them under random lighting and colour
             changes made in MuJoCo) as PNG frames for pretraining; scripted-expert demos into a
             LeRobotDataset for the policies; benchmark episodes (other seeds) under the encoder
             benchmark's visual conditions, with depth and segmentation renders
2. pretrain  a small DINOv2 with the full objective (`small_data_cpu` preset, probe of held-out
             episodes during training): `python -m vla_dino.pretrain --frames …`
3. probe     the encoder benchmark (`lerobot_env_vla_dino.encoder_benchmark`): few-label state and
             dense depth/segmentation probes, clean / across conditions / held-out conditions,
             beside random init (3 seeds), raw pixels and a ResNet-18 trained from scratch
4. policy    `lerobot-train --policy.type=vla_dino` on the demos, once per encoder (frozen)
5. rollout   success rate of each policy in the simulator, with videos
6. report    report.md + PNGs: the benchmark table and probe curves first, then the probe-vs-step
             curve, losses, PCA feature maps before/after and success
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from vla_dino.configs.loader import parse_flags

STAGES = ("collect", "pretrain", "probe", "policy", "rollout", "report")
ENCODERS = ("pretrained", "random_init")


@dataclass
class DemoConfig:
    """Every field is a flag (`out_dir` → `--out-dir`), its comment the flag's help (vla_dino.configs.loader)."""

    out_dir: Path = Path("outputs/demo")  # where every stage writes
    task: str = "button-press-topdown-v3"  # Meta-World v3 task with a scripted expert
    num_demos: int = 20  # scripted-expert demos the policies train on
    pretrain_episodes: int = 40  # expert episodes whose frames are the pretraining data
    varied_fraction: float = 0.5  # share of pretraining episodes under a random lighting/colour change
    benchmark_episodes: int = 24  # encoder-benchmark episodes (cycled over its 6 visual conditions)
    frame_size: int = 84  # stored camera frame side in px (square)
    pretrain_preset: str = "small_data_cpu"  # configs/pretrain/<name>.yaml (small_data_cpu: hidden 64, patch 7)
    # pretraining steps (schedules laid over them), to finish in ~10 min: the preset's own 3000
    # take ~9 min on 2 cores. null: the preset's.
    pretrain_steps: int | None = 1000
    scene_max_steps: int = 150  # step limit of the pretraining and benchmark episodes
    benchmark_budgets: tuple[int, ...] = (25, 50)  # labelled frames of the state probes (≤ ~65 at 24 episodes)
    benchmark_dense_budgets: tuple[int, ...] = (10, 50)  # labelled frames (all their patches) of the dense probes
    resnet_steps: int = 150  # ResNet-18 baseline: Adam steps per fit (clean split, largest budget)
    policy_steps: int = 400  # lerobot-train steps per policy
    policy_batch_size: int = 16  # lerobot-train batch size
    image_size: int = 56  # encoder input side (multiple of 14)
    eval_episodes: int = 20  # rollouts per policy
    eval_max_steps: int = 150  # episode limit in rollouts (the expert needs about 70 on button-press-topdown)
    device: str = "cpu"  # cpu | cuda
    restart: bool = False  # delete --out-dir and start over
    seed: int = 0  # seed of every stage (episodes, pretraining, policies)

    @property
    def env_id(self) -> str:
        return f"vla_dino/MetaWorld-{self.task}"


# ---------------------------------------------------------------- stage bookkeeping
def stage_dir(config: DemoConfig, stage: str) -> Path:
    return config.out_dir / f"{STAGES.index(stage) + 1}_{stage}"


def run_stage(config: DemoConfig, stage: str, body: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """Runs `body(folder)` unless an earlier run finished this stage; records its result."""
    folder = stage_dir(config, stage)
    marker = folder / "stage.json"
    if marker.is_file():
        print(f"[{stage}] reusing {folder} (--restart to redo)")
        return json.loads(marker.read_text())
    if folder.exists():  # an interrupted earlier attempt: its partial outputs are not trusted
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    print(f"\n[{stage}] → {folder}")
    start = time.perf_counter()
    result = body(folder)
    result["seconds"] = round(time.perf_counter() - start, 1)
    marker.write_text(json.dumps(result, indent=2, default=str))
    print(f"[{stage}] done in {result['seconds']:.0f} s")
    return result


def run_command(command: list[str], log_file: Path, device: str) -> None:
    """Runs a CLI step, showing its output live and keeping the full output in `log_file`."""
    print("  $ " + " ".join(command))
    env = dict(os.environ, WANDB_MODE="disabled")
    if device == "cpu":  # tiny models: one BLAS thread per process beats 2 threads fighting data workers
        env.setdefault("OMP_NUM_THREADS", "1")
    with open(log_file, "w") as log:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        assert process.stdout is not None
        # Without a system FFmpeg, LeRobot logs torchcodec's load failure (a long traceback) and
        # falls back to PyAV: that block is kept in the log only.
        in_codec_warning = False
        for line in process.stdout:
            log.write(line)
            if "Could not load libtorchcodec" in line:
                in_codec_warning = True
            if not in_codec_warning:
                sys.stdout.write(line)
            if "Falling back to 'pyav'" in line:
                in_codec_warning = False
        if process.wait() != 0:
            raise RuntimeError(f"step failed (exit {process.returncode}): {' '.join(command)}\nlog: {log_file}")


# ---------------------------------------------------------------- stages
def collect(config: DemoConfig, folder: Path) -> dict[str, Any]:
    from lerobot_env_vla_dino.collect import collect_demos
    from lerobot_env_vla_dino.scene_data import collect_scenes
    from lerobot_env_vla_dino.visual import BENCHMARK_CONDITIONS

    # pretraining frames: seeds 10000+, apart from the demos (0+) and the benchmark (1000+)
    collect_scenes(
        config.task, config.pretrain_episodes, varied_fraction=config.varied_fraction, image_size=config.frame_size,
        seed=10_000 + config.seed, max_steps=config.scene_max_steps, frames_dir=folder / "frames", with_labels=False,
    )
    demos = collect_demos(
        config.env_id, config.num_demos, folder / "metaworld", seed=config.seed,
        image_size=config.frame_size, use_videos=False,
    )
    scenes = collect_scenes(
        config.task, config.benchmark_episodes, list(BENCHMARK_CONDITIONS.values()), image_size=config.image_size,
        seed=1000 + config.seed, max_steps=config.scene_max_steps, frame_stride=2,
    )
    scenes.save(folder / "benchmark_scenes")
    print(f"  stand-alone: python -m lerobot_env_vla_dino.scene_data --task={config.task} --num_episodes=<n> "
          f"--varied_fraction={config.varied_fraction} --write_frames=true --with_labels=false --out=<dir>")
    print(f"  stand-alone: python -m lerobot_env_vla_dino.collect --env_id={config.env_id} "
          f"--num_episodes={config.num_demos} --root=<dir>")
    return {"demos": str(demos), "frames": [str(folder / "frames")], "scenes": str(folder / "benchmark_scenes")}


def pretrain(config: DemoConfig, folder: Path, frames: list[str]) -> dict[str, Any]:
    command = [sys.executable, "-m", "vla_dino.pretrain", "--preset", config.pretrain_preset,
               "--output-dir", str(folder / "run"),
               "--device", config.device, "--seed", str(config.seed),
               "--set", f"data.frame_size={config.frame_size}"]
    if config.pretrain_steps is not None:
        command += ["--steps", str(config.pretrain_steps)]
    for path in frames:
        command += ["--frames", path]
    run_command(command, folder / "pretrain.log", config.device)
    run = folder / "run"
    # the random-init baseline: the same architecture and init seed, never trained
    import torch
    from transformers import AutoConfig

    from vla_dino.encoder import DinoEncoder

    torch.manual_seed(config.seed)
    DinoEncoder(AutoConfig.from_pretrained(run / "export" / "hf")).save_pretrained(folder / "random_init")
    return {"run": str(run), "pretrained": str(run / "export" / "hf"), "random_init": str(folder / "random_init"),
            "metrics": str(run / "metrics.csv"), "loss_curve": str(run / "loss_curve.png")}


def probe(config: DemoConfig, folder: Path, scenes: str, pretrained: str) -> dict[str, Any]:
    from lerobot_env_vla_dino.encoder_benchmark import EncoderBenchmarkConfig, run_encoder_benchmark

    budgets = list(config.benchmark_budgets)
    benchmark = EncoderBenchmarkConfig(
        encoders=[f"{config.pretrain_preset}=dino:{pretrained}"], task=config.task, scenes=scenes, image_size=config.image_size,
        budgets=budgets, dense_budgets=list(config.benchmark_dense_budgets), draws=5, random_seeds=[0, 1, 2], resnet_splits=["clean"],
        resnet_budgets=[budgets[-1]], resnet_steps=config.resnet_steps, device=config.device, out_dir=str(folder),
        seed=config.seed,
    )
    run_encoder_benchmark(benchmark)
    print("  stand-alone: python -m lerobot_env_vla_dino.encoder_benchmark --encoders='[dino:<export>]' --out_dir=<dir>")
    return {"report": str(folder / "report.md"), "results": str(folder / "results.json"), "plot": str(folder / "probes.png")}


def train_policy(config: DemoConfig, folder: Path, demos: str, encoder: str, name: str) -> str:
    output = folder / name
    command = [
        str(Path(sys.executable).with_name("lerobot-train")),
        "--policy.type=vla_dino", f"--policy.vision.dino={encoder}", "--policy.vision.train_mode=frozen",
        f"--policy.vision.image_size={config.image_size}", "--policy.vision.projector=mlp", "--policy.vision.out_dim=128",
        "--policy.head=act_decoder", "--policy.dim_model=128", "--policy.dim_feedforward=512",
        "--policy.chunk_size=8", "--policy.n_action_steps=4", f"--policy.device={config.device}",
        "--policy.push_to_hub=false",
        "--dataset.repo_id=vla_dino/demos", f"--dataset.root={demos}",
        f"--output_dir={output}", f"--steps={config.policy_steps}", f"--batch_size={config.policy_batch_size}",
        f"--save_freq={config.policy_steps}", "--log_freq=50", "--num_workers=2",
        "--wandb.enable=false", f"--seed={config.seed}",
    ]
    run_command(command, folder / f"{name}.log", config.device)
    return str(output / "checkpoints" / "last" / "pretrained_model")


def rollout(config: DemoConfig, folder: Path, policies: dict[str, str]) -> dict[str, Any]:
    from lerobot_env_vla_dino.evaluate import evaluate

    results = {}
    for name, checkpoint in policies.items():
        result = evaluate(checkpoint, config.env_id, config.eval_episodes, seed=1000 + config.seed,
                          out_dir=folder / name, num_videos=2, device=config.device, max_steps=config.eval_max_steps,
                          env_kwargs={"image_size": config.frame_size})
        low, high = result.success_ci95
        print(f"  {name:<12} success {result.success_rate:.2f} (95% CI {low:.2f}–{high:.2f}) "
              f"over {result.num_episodes} episodes")
        results[name] = asdict(result)
    return results


def probe_curve(run: Path, out: Path) -> Path | None:
    """The pretraining probe against step (step 0 is the random init): held-out retrieval under a
    photometric change, with chance and raw pixels as flat lines, and RankMe."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vla_dino.pretrain.logger import read_metrics

    rows = read_metrics(run / "probe.jsonl")
    if not rows:
        return None
    steps = [r["step"] for r in rows]
    fig, (ax, rank) = plt.subplots(1, 2, figsize=(10, 3.4))
    ax.plot(steps, [r["probe/retrieval_changed"] for r in rows], marker="o", label="pretrained teacher (step 0 = random init)")
    ax.axhline(rows[0]["probe/retrieval_chance"], color="grey", linestyle=":", label="chance")
    if "probe/pixels_retrieval_changed" in rows[0]:
        ax.axhline(rows[0]["probe/pixels_retrieval_changed"], color="tab:green", linestyle="--", label="raw pixels (12×12)")
    ax.set(xlabel="pretraining step", ylabel="hit rate", title="held-out retrieval under a colour/light change")
    ax.legend(fontsize=7)
    rank.plot(steps, [r["probe/rankme"] for r in rows], marker="o", color="tab:purple")
    rank.set(xlabel="pretraining step", ylabel="RankMe", title="effective dimension of held-out features")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def report(config: DemoConfig, folder: Path, stages: dict[str, dict[str, Any]]) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vla_dino.encoder import DinoEncoder
    from vla_dino.data import load_frame_tensor
    from vla_dino.visualize import render_grid

    pre = stages["pretrain"]
    run = Path(pre["run"])
    # loss curves
    with open(pre["metrics"]) as file:
        rows = list(csv.DictReader(file))
    metrics = {key: [float(row[key]) for row in rows if row.get(key)] for key in rows[0]} if rows else {}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    loss_columns = [c for c in ("loss", "dino_local", "dino_global", "ibot", "koleo") if c in metrics]
    for column in loss_columns:
        axes[0].plot(metrics["step"], metrics[column], label=column)
    axes[0].set(xlabel="step", title="pretraining losses")
    axes[0].legend(fontsize=7)
    if "teacher_entropy" in metrics:
        axes[1].plot(metrics["step"], metrics["teacher_entropy"], color="tab:purple", label="teacher entropy")
        if "dino_kl" in metrics:
            axes[1].plot(metrics["step"], metrics["dino_kl"], color="tab:red", label="student–teacher KL")
        axes[1].set(xlabel="step", title="teacher targets (collapse monitor)")
        axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(folder / "loss_curves.png", dpi=100)
    plt.close(fig)
    curve = probe_curve(run, folder / "probe_vs_step.png")

    # PCA feature maps and CLS attention, before/after
    frames = load_frame_tensor(stages["collect"]["frames"], config.image_size * 2, num_frames=4)
    render_grid(frames, [("random init", DinoEncoder.from_pretrained(pre["random_init"])),
                         ("pretrained", DinoEncoder.from_pretrained(pre["pretrained"]))],
                folder / "features_before_after.png", cell_px=160)

    # success bars
    rollouts = stages["rollout"]
    rates = [rollouts[n]["success_rate"] for n in ENCODERS]
    errors = [[r - rollouts[n]["success_ci95"][0] for n, r in zip(ENCODERS, rates)],
              [rollouts[n]["success_ci95"][1] - r for n, r in zip(ENCODERS, rates)]]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.bar(list(ENCODERS), rates, yerr=errors, capsize=6, color=["tab:blue", "tab:orange"])
    ax.set(title=f"{config.task}: policy success (95% CI)", ylim=(0, 1))
    fig.tight_layout()
    fig.savefig(folder / "success.png", dpi=100)
    plt.close(fig)

    benchmark = Path(stages["probe"]["report"]).read_text()
    tables = benchmark[benchmark.index("### State probes"): benchmark.index("![state probes]")].strip()
    shutil.copy(stages["probe"]["plot"], folder / "benchmark_probes.png")
    lines = [
        "# vla_dino demo report", "",
        f"Task `{config.task}` (Meta-World v3). Pretraining data: {config.pretrain_episodes} expert episodes at "
        f"{config.frame_size}² px, {config.varied_fraction:.0%} of them under random lighting/colour changes (MuJoCo model edits). "
        f"Encoder: `{config.pretrain_preset}` preset (configs/pretrain/{config.pretrain_preset}.yaml), "
        f"{config.pretrain_steps or 'the preset’s'} steps on {config.device}.", "",
        "## Encoder benchmark (frozen features, held-out episodes)", "",
        f"Benchmark episodes: {config.benchmark_episodes} other seeds under 6 visual conditions. Pretrained encoder: mean ± std "
        "over label draws; random init of the same architecture: range over 3 seeds; ResNet-18: trained from scratch end "
        f"to end on the labelled frames ({config.resnet_steps} Adam steps, clean split, largest budget only on CPU). "
        "A pretrained number counts as a win only outside the random-init range.", "",
        tables, "",
        f"![state probe R² against labelled frames]({folder.name}/benchmark_probes.png)", "",
    ]
    if curve is not None:
        lines += ["## Probe during pretraining", "", f"![probe vs step]({folder.name}/probe_vs_step.png)", ""]
    lines += [
        "## Pretraining", "", f"![loss curves]({folder.name}/loss_curves.png)", "",
        f"![PCA of patch features and CLS attention, random init vs pretrained]({folder.name}/features_before_after.png)", "",
        "## Policies", "", f"![success]({folder.name}/success.png)", "",
        "| encoder | success | 95% CI | episodes |", "|---|---|---|---|",
    ]
    for name in ENCODERS:
        low, high = rollouts[name]["success_ci95"]
        lines.append(f"| {name} | {rollouts[name]['success_rate']:.2f} | {low:.2f}–{high:.2f} | {rollouts[name]['num_episodes']} |")
    lines += ["", f"Full benchmark report: `{stages['probe']['report']}`.", "",
              "Stage times (s): " + ", ".join(f"{s} {stages[s].get('seconds', 0):.0f}" for s in STAGES if s in stages), ""]
    path = config.out_dir / "report.md"
    path.write_text("\n".join(lines))
    return {"report": str(path)}


# ---------------------------------------------------------------- driver
def run(config: DemoConfig) -> Path:
    if config.restart and config.out_dir.exists():
        shutil.rmtree(config.out_dir)
    config.out_dir.mkdir(parents=True, exist_ok=True)
    stages: dict[str, dict[str, Any]] = {}
    stages["collect"] = run_stage(config, "collect", lambda f: collect(config, f))
    demos = stages["collect"]["demos"]
    stages["pretrain"] = run_stage(config, "pretrain", lambda f: pretrain(config, f, stages["collect"]["frames"]))
    encoders = {name: stages["pretrain"][name] for name in ENCODERS}
    stages["probe"] = run_stage(config, "probe", lambda f: probe(config, f, stages["collect"]["scenes"], encoders["pretrained"]))
    stages["policy"] = run_stage(
        config, "policy", lambda f: {name: train_policy(config, f, demos, path, name) for name, path in encoders.items()}
    )
    policies = {name: stages["policy"][name] for name in ENCODERS}
    stages["rollout"] = run_stage(config, "rollout", lambda f: rollout(config, f, policies))
    # the report is cheap: always rebuilt from the stages' results
    shutil.rmtree(stage_dir(config, "report"), ignore_errors=True)
    stages["report"] = run_stage(config, "report", lambda f: report(config, f, stages))
    return Path(stages["report"]["report"])


def parse_args(argv: list[str] | None = None) -> DemoConfig:
    parser = argparse.ArgumentParser(prog="python -m lerobot_env_vla_dino.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    return parse_flags(parser, DemoConfig, argv)


def main(argv: list[str] | None = None) -> Path:
    os.environ.setdefault("MUJOCO_GL", "egl")
    config = parse_args(argv)
    # LeRobot warns at length that torchcodec cannot load without a system FFmpeg; it then uses PyAV.
    logging.getLogger("lerobot.utils.import_utils").addFilter(lambda record: "torchcodec" not in record.getMessage())
    if config.device == "cpu":
        import torch

        torch.set_num_threads(1)  # see run_command
    start = time.perf_counter()
    path = run(config)
    print(f"\nreport: {path.resolve()}  ({(time.perf_counter() - start) / 60:.1f} min)")
    return path


if __name__ == "__main__":
    main()
