"""End-to-end batch-1 latency: vla_dino's PolicyRuntime beside plain eager LeRobot inference.

Both sides start from the same raw observation (uint8 HWC camera images + float32 state) and end
with the action chunk as a numpy array on the host: preprocess → encoder → head → postprocess.
Eager = ``prepare_observation_for_inference`` → preprocessor → ``predict_action_chunk`` →
postprocessor → ``.cpu()`` in fp32, as ``lerobot-rollout`` runs it. The sustained control rate is
measured with :class:`~vla_dino.runtime.chunking.ControlLoop` running one inference per tick
(blocking, as fast as possible); the async row runs the loop at ``--fps`` with chunking.

    python benchmarks/bench_runtime_latency.py                      # CPU, tiny vla_dino policy (< 1 min)
    python benchmarks/bench_runtime_latency.py --device cuda --preset vla_dino-moonshot --dtype bf16
    python benchmarks/bench_runtime_latency.py --checkpoint outputs/train/x/checkpoints/last/pretrained_model
    python benchmarks/bench_runtime_latency.py --variants unfused fused fused+fp8   # tower rewrites side by side

``--variants`` builds one runtime of the same checkpoint per variant (``RuntimeConfig`` overrides: fused QKV
attention off / on, float8 tower weights), times them interleaved with the eager row, and prints each one's
p50 ratio to the first variant and its action error against eager and against the first variant (for fp8:
the error that quantisation adds to bf16). The last variant is profiled and runs the control loop.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from machine import machine_name  # benchmarks/machine.py (this script's folder)
from vla_dino.runtime.chunking import ControlConfig, ControlLoop
from vla_dino.runtime.loading import lerobot_predict_chunk, load_policy
from vla_dino.runtime.random_checkpoint import TINY_ACT, write_random_checkpoint
from vla_dino.device import COMPILE_MODES
from vla_dino.runtime.runtime import PolicyRuntime, RuntimeConfig


def vla_dino_preset(dino: str, siglip: str | None, image_size: int, **head: object) -> dict:
    from vla_dino.adapter import VisionTokenizerConfig

    projector = "fused-gelu-mlp" if siglip else "mlp"
    vision = VisionTokenizerConfig(dino=dino, siglip=siglip, image_size=image_size, projector=projector)
    return dict(policy_type="vla_dino", image_size=image_size, vision=vision, chunk_size=16, n_action_steps=8, **head)


PRESETS: dict[str, Callable[[], dict]] = {
    "act-tiny": lambda: dict(policy_type="act", image_size=96, **TINY_ACT),
    "vla_dino-tiny": lambda: vla_dino_preset("tiny", None, 56, dim_model=32, n_heads=2, dim_feedforward=64, n_decoder_layers=1),
    # the moonshot's layout (DINOv2 reg + SigLIP, fused projector) at test size, for CPU checks
    "vla_dino-tiny-siglip": lambda: vla_dino_preset("tiny_reg", "tiny", 56, dim_model=32, n_heads=2, dim_feedforward=64, n_decoder_layers=1),
    "vla_dino-vits14_reg": lambda: vla_dino_preset("vits14_reg", None, 224, dim_model=256, n_heads=8, dim_feedforward=1024, n_decoder_layers=2),
    # The target: DINOv2-L/14 reg + SigLIP so400m at 224², OpenVLA's fused projector, ACT-style decoder head.
    "vla_dino-moonshot": lambda: vla_dino_preset("vitl14_reg", "so400m", 224),
}


# Runtime variants (RuntimeConfig overrides on top of the flags), each one row.
VARIANTS: dict[str, dict[str, bool]] = {
    "unfused": dict(fuse_qkv=False),
    "fused": dict(fuse_qkv=True),
    "fused+fp8": dict(fuse_qkv=True, fp8_towers=True),
}


def time_interleaved(fns: list[Callable[[], object]], warmup: int, iters: int) -> list[np.ndarray]:
    """Per-call wall times (ms), the candidates alternating call by call so load drift hits all alike."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times = np.empty((len(fns), iters))
    for i in range(iters):
        for j, fn in enumerate(fns):
            start = time.perf_counter()
            fn()  # returns host numpy: the device work is finished
            times[j, i] = (time.perf_counter() - start) * 1e3
    return list(times)


def sustained_hz(predict: Callable[[dict], np.ndarray], observation: dict, steps: int) -> float:
    """Ticks per second with one blocking inference per tick (no chunk reuse)."""
    loop = ControlLoop(predict, lambda: observation, lambda action: None, ControlConfig(fps=0, blocking=True))
    return loop.run(steps).achieved_hz


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--checkpoint", default=None, help="LeRobot checkpoint folder; default: build --preset with random weights")
    parser.add_argument("--preset", default="vla_dino-tiny", choices=sorted(PRESETS))
    parser.add_argument("--dtype", default="auto", help="fp32 | bf16 | fp16 | auto (bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the policy in the runtime")
    parser.add_argument("--compile-mode", default=RuntimeConfig.compile_mode, choices=COMPILE_MODES)
    parser.add_argument("--cast-weights", action="store_true", help="runtime stores weights in --dtype (no per-call casts)")
    parser.add_argument("--no-capture-processors", action="store_true", help="CUDA graph of the policy forward only")
    parser.add_argument("--profile", action="store_true", help="also print the runtime's per-stage breakdown")
    parser.add_argument("--no-cuda-graphs", action="store_true")
    parser.add_argument("--variants", nargs="+", default=["fused"], choices=VARIANTS,
                        help="runtime rows: unfused / fused q/k/v attention in the towers, fused + float8 tower weights")
    parser.add_argument("--channels-last", action="store_true", help="channels-last patch-embedding convs (RuntimeConfig.channels_last)")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--fps", type=float, default=30.0, help="target rate of the async control-loop row")
    parser.add_argument("--loop-steps", type=int, default=30)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    device = torch.device(args.device)

    with tempfile.TemporaryDirectory() as tmp:
        if args.checkpoint:
            path, name = Path(args.checkpoint), args.checkpoint
        else:
            preset = PRESETS[args.preset]()
            size = preset.pop("image_size")
            path = write_random_checkpoint(Path(tmp) / "pretrained_model", preset.pop("policy_type"), cameras={"front": (size, size)}, state_dim=8, action_dim=7, **preset)
            name = f"{args.preset} (random init)"

        policy, pre, post = load_policy(path, device)
        runtimes = {  # variant → runtime; the last one is profiled and runs the control loop
            variant: PolicyRuntime.from_pretrained(
                path,
                RuntimeConfig(device=args.device, dtype=args.dtype, cast_weights=args.cast_weights, compile=args.compile,
                              compile_mode=args.compile_mode, cuda_graphs=not args.no_cuda_graphs,
                              capture_processors=not args.no_capture_processors, warmup_iters=args.warmup,
                              channels_last=args.channels_last, **VARIANTS[variant]),
            )
            for variant in dict.fromkeys(args.variants)
        }
        runtime = list(runtimes.values())[-1]
        observation = runtime._synthetic_observation(runtime.spec.inputs, seed=0)
        params = sum(p.numel() for p in policy.parameters()) / 1e6

        eager = lambda: lerobot_predict_chunk(policy, pre, post, observation, device)  # noqa: E731
        candidates = [("eager LeRobot, fp32", eager, lambda obs: eager())]
        for variant, each in runtimes.items():
            label = f"vla_dino runtime, {each.dtype}, {variant}"
            candidates.append((label, lambda each=each: each.predict_chunk(observation), each.predict_chunk))
        all_times = time_interleaved([fn for _, fn, _ in candidates], args.warmup, args.iters)
        rows = []
        for (label, _, predict), times in zip(candidates, all_times):
            rows.append({"name": label, "p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99)),
                         "mean_ms": float(times.mean()), "sustained_hz": sustained_hz(predict, observation, max(args.iters // 2, 5))})

        reference = eager()
        stages = runtime.profile(observation, iters=args.iters) if args.profile else None
        chunks = {variant: each.predict_chunk(observation) for variant, each in runtimes.items()}
        first = next(iter(chunks.values()))
        diffs = {variant: {"vs_eager": float(np.abs(chunk - reference).max()), "vs_first": float(np.abs(chunk - first).max())}
                 for variant, chunk in chunks.items()}
        stats = ControlLoop(runtime.predict_chunk, lambda: observation, lambda a: None,
                            ControlConfig(fps=args.fps, scheduler="ensemble")).run(args.loop_steps)
        del policy

    print(f"\nmachine: {machine_name(device)}")
    print(f"policy:  {name}: {params:.1f} M params, inputs {[(s.name, s.shape) for s in runtime.spec.inputs]}, "
          f"chunk {runtime.spec.chunk_size}x{runtime.spec.action_dim}")
    first_variant = next(iter(runtimes))
    for variant, each in runtimes.items():
        print(f"runtime ({variant}): {'; '.join(each.notes)}")
        print(f"  max |Δaction| vs eager {diffs[variant]['vs_eager']:.3g}, vs {first_variant} {diffs[variant]['vs_first']:.3g} "
              f"(max |action| {np.abs(reference).max():.3g})")
    print()
    if stages:
        print("runtime stages (ms, mean; eager stages with a device sync after each):")
        print("  " + "  ".join(f"{name} {value:.2f}" for name, value in stages.items()) + "\n")
    header = f"{'pipeline (batch 1, end to end)':<38}{'p50 ms':>9}{'p99 ms':>9}{'mean ms':>9}{'sync Hz':>9}"
    print(header + "\n" + "-" * len(header))
    for row in rows:
        print(f"{row['name']:<38}{row['p50_ms']:>9.2f}{row['p99_ms']:>9.2f}{row['mean_ms']:>9.2f}{row['sustained_hz']:>9.1f}")
    speedup = rows[0]["p50_ms"] / rows[-1]["p50_ms"]
    print(f"\nspeed-up (eager p50 / runtime p50): {speedup:.2f}x")
    variant_speedups = {row["name"]: rows[1]["p50_ms"] / row["p50_ms"] for row in rows[2:]}
    for name, ratio in variant_speedups.items():
        print(f"{name}: {ratio:.3f}x the p50 speed of {rows[1]['name']}")
    print(f"async control loop at {args.fps:g} Hz target (temporal ensembling): {stats.achieved_hz:.1f} Hz achieved, "
          f"{stats.chunks} chunks over {stats.steps} ticks, {stats.starved_steps} starved, {stats.late_ticks} late")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine_name(device), "policy": name, "rows": rows, "speedup_p50": speedup,
                                               "notes": {v: r.notes for v, r in runtimes.items()}, "max_abs_diff": diffs,
                                               "speedup_vs_first_variant_p50": variant_speedups, "stages_ms": stages,
                                               "control_loop": {"target_hz": args.fps, "achieved_hz": stats.achieved_hz,
                                                                "starved": stats.starved_steps, "late": stats.late_ticks}}, indent=2))


if __name__ == "__main__":
    main()
