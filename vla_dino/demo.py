"""The main job end to end, on embedded defaults: simulator frames → pretrained encoder → policy.

    python -m vla_dino.demo                    # CPU, about 10 minutes on 2 cores, writes outputs/demo/report.md
    python -m vla_dino.demo --restart          # start over instead of reusing earlier stages
    python -m vla_dino.demo --help

Stages (each writes its folder under --out-dir and is skipped on a second run when its
`stage.json` exists; each prints the stand-alone command that does the same with your data):

1. collect   scripted-expert demos from Meta-World (+ PushT frames) into local LeRobotDatasets
2. pretrain  a small DINOv2 with the full objective: `python -m vla_dino.pretrain --frames …`
3. probe     ridge-probe R² of simulator state from frozen features, pretrained vs random init
4. policy    `lerobot-train --policy.type=vla_dino` on the demos, once per encoder (frozen)
5. rollout   success rate of each policy in the simulator, with videos
6. report    report.md + PNGs: loss curve, PCA feature maps before/after, probe R², success
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

STAGES = ("collect", "pretrain", "probe", "policy", "rollout", "report")
ENCODERS = ("pretrained", "random_init")


@dataclass
class DemoConfig:
    out_dir: Path = Path("outputs/demo")
    task: str = "button-press-topdown-v3"  # a Meta-World v3 task with a scripted expert
    num_demos: int = 20
    pusht_episodes: int = 4  # extra PushT frames for pretraining only (0: none)
    frame_size: int = 84  # stored camera frames (square)
    pretrain_preset: str = "demo_sim"  # configs/pretrain/demo_sim.yaml: hidden 64, patch 7, 1500 steps
    pretrain_steps: int | None = None  # None: the preset's
    policy_steps: int = 400
    policy_batch_size: int = 16
    image_size: int = 56  # encoder input side (multiple of 14)
    eval_episodes: int = 20
    eval_max_steps: int = 150  # the expert needs about 70 steps on button-press-topdown
    device: str = "cpu"
    restart: bool = False
    seed: int = 0

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

    demos = collect_demos(
        config.env_id, config.num_demos, folder / "metaworld", seed=config.seed,
        image_size=config.frame_size, use_videos=False,
    )
    result: dict[str, Any] = {"demos": str(demos), "frames": [str(demos)]}
    if config.pusht_episodes:
        pusht = collect_demos(
            "vla_dino/PushT-v0", config.pusht_episodes, folder / "pusht", seed=config.seed,
            image_size=config.frame_size, use_videos=False, drop_failures=False, max_steps=150,
        )
        result["frames"].append(str(pusht))
    print(f"  stand-alone: python -m lerobot_env_vla_dino.collect --env_id={config.env_id} "
          f"--num_episodes={config.num_demos} --root=<dir>")
    return result


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


def probe(config: DemoConfig, folder: Path, demos: str, encoders: dict[str, str]) -> dict[str, Any]:
    from lerobot_env_vla_dino.probes import probe_dataset

    from vla_dino.encoder import DinoEncoder

    results: dict[str, Any] = {}
    for name, path in encoders.items():
        report = probe_dataset(demos, DinoEncoder.from_pretrained(path), seed=config.seed)
        results[name] = {"r2": report.probe.r2, "knn_ratio": report.retrieval.ratio, "frames": report.num_frames}
        r2 = ", ".join(f"{k} {v:.2f}" for k, v in report.probe.r2.items())
        print(f"  {name:<12} R² {r2}; k-NN state distance ratio {report.retrieval.ratio:.2f}")
    return results


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


def report(config: DemoConfig, folder: Path, stages: dict[str, dict[str, Any]]) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vla_dino.encoder import DinoEncoder
    from vla_dino.visualize import load_frames, render_grid

    pre = stages["pretrain"]
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
        axes[1].plot(metrics["step"], metrics["teacher_entropy"], color="tab:purple")
        axes[1].set(xlabel="step", title="teacher entropy (collapse monitor)")
    fig.tight_layout()
    fig.savefig(folder / "loss_curves.png", dpi=100)
    plt.close(fig)

    # PCA feature maps and CLS attention, before/after
    frames = load_frames(stages["collect"]["frames"], 4, config.image_size * 2, None)
    render_grid(frames, [("random init", DinoEncoder.from_pretrained(pre["random_init"])),
                         ("pretrained", DinoEncoder.from_pretrained(pre["pretrained"]))],
                folder / "features_before_after.png", cell_px=160)

    # probe R² bars and success bars
    probes = stages["probe"]
    variables = list(next(iter(probes.values()))["r2"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    width = 0.8 / len(ENCODERS)
    for i, name in enumerate(ENCODERS):
        axes[0].bar([x + i * width for x in range(len(variables))], [probes[name]["r2"][v] for v in variables],
                    width, label=name)
    axes[0].set_xticks([x + width / 2 for x in range(len(variables))], variables, rotation=20, fontsize=8)
    axes[0].set(title="linear probe of simulator state (held-out R²)", ylim=(min(0, axes[0].get_ylim()[0]), 1))
    axes[0].legend(fontsize=8, loc="lower right")
    rollouts = stages["rollout"]
    rates = [rollouts[n]["success_rate"] for n in ENCODERS]
    errors = [[r - rollouts[n]["success_ci95"][0] for n, r in zip(ENCODERS, rates)],
              [rollouts[n]["success_ci95"][1] - r for n, r in zip(ENCODERS, rates)]]
    axes[1].bar(list(ENCODERS), rates, yerr=errors, capsize=6, color=["tab:blue", "tab:orange"])
    axes[1].set(title=f"{config.task}: policy success (95% CI)", ylim=(0, 1))
    fig.tight_layout()
    fig.savefig(folder / "probe_and_success.png", dpi=100)
    plt.close(fig)

    lines = [
        "# vla_dino demo report", "",
        f"Task `{config.task}` (Meta-World v3), {config.num_demos} scripted demos at {config.frame_size}² px"
        + (f", plus {config.pusht_episodes} PushT episodes for pretraining" if config.pusht_episodes else "") + ".",
        f"Encoder: `{config.pretrain_preset}` preset (configs/pretrain/{config.pretrain_preset}.yaml), "
        f"{config.pretrain_steps or 'the preset’s'} pretraining steps on {config.device}.", "",
        "## Pretraining", "", f"![loss curves]({folder.name}/loss_curves.png)", "",
        f"![PCA of patch features and CLS attention, random init vs pretrained]({folder.name}/features_before_after.png)", "",
        "## Probes and policies", "", f"![probe R² and success]({folder.name}/probe_and_success.png)", "",
        "| encoder | " + " | ".join(f"R² {v}" for v in variables) + " | k-NN ratio | success | 95% CI |",
        "|---" * (len(variables) + 4) + "|",
    ]
    for name in ENCODERS:
        low, high = rollouts[name]["success_ci95"]
        lines.append(f"| {name} | " + " | ".join(f"{probes[name]['r2'][v]:.3f}" for v in variables)
                     + f" | {probes[name]['knn_ratio']:.3f} | {rollouts[name]['success_rate']:.2f} | {low:.2f}–{high:.2f} |")
    lines += ["", "k-NN ratio: mean state distance of each frame's nearest neighbours in feature space over that of "
              "random pairs (lower is better).", "",
              f"Stage times (s): " + ", ".join(f"{s} {stages[s].get('seconds', 0):.0f}" for s in STAGES if s in stages), ""]
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
    stages["probe"] = run_stage(config, "probe", lambda f: probe(config, f, demos, encoders))
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
    defaults = DemoConfig()
    parser = argparse.ArgumentParser(prog="python -m vla_dino.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=Path, default=defaults.out_dir, help="where every stage writes (default %(default)s)")
    parser.add_argument("--task", default=defaults.task, help="Meta-World v3 task (default %(default)s)")
    parser.add_argument("--num-demos", type=int, default=defaults.num_demos)
    parser.add_argument("--pusht-episodes", type=int, default=defaults.pusht_episodes, help="PushT episodes added to the pretraining frames")
    parser.add_argument("--frame-size", type=int, default=defaults.frame_size, help="stored frame side in px")
    parser.add_argument("--pretrain-preset", default=defaults.pretrain_preset, help="configs/pretrain/<name>.yaml")
    parser.add_argument("--pretrain-steps", type=int, default=defaults.pretrain_steps, help="default: the preset's")
    parser.add_argument("--policy-steps", type=int, default=defaults.policy_steps)
    parser.add_argument("--policy-batch-size", type=int, default=defaults.policy_batch_size)
    parser.add_argument("--image-size", type=int, default=defaults.image_size, help="encoder input side (multiple of 14)")
    parser.add_argument("--eval-episodes", type=int, default=defaults.eval_episodes)
    parser.add_argument("--eval-max-steps", type=int, default=defaults.eval_max_steps, help="episode limit in rollouts")
    parser.add_argument("--device", default=defaults.device, help="cpu | cuda")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--restart", action="store_true", help="delete --out-dir and start over")
    args = parser.parse_args(argv)
    return DemoConfig(**{k: v for k, v in vars(args).items()})


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
