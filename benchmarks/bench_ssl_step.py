"""One full DINOv2 training step (teacher + student forward, DINO + iBOT + KoLeo, backward,
clip, AdamW, EMA) — ours (`vla_dino.ssl.SSLTrainer.step`, the pretraining loop's step) beside
the peer a user would otherwise pick: lightly's DINOLoss / IBOTPatchLoss / KoLeoLoss / DINOv2ProjectionHead /
update_momentum around the same transformers ViT, written like lightly's DINOv2 example.

Same encoder weights, same crops and masks, same batch, one process. The lightly step lives in
`benchmarks/lightly_peer.py` (shared with `ssl_peer_training.py`, which trains both to compare
what they learn). Prints a table with
median step time and peak memory (CUDA only; CPU has no allocator peak to read) and the
ratio peer / ours; the "packed" row is ours with `optim.pack_crops` (the student's global and
local crops through the backbone in one pass, `DinoEncoder.forward_packed`). `--compile` adds the Sinkhorn-Knopp
rows again with `train.compile` (student and teacher through `torch.compile`; the warm-up steps compile, so give
it `--warmup 3` or more). Needs `pip install lightly` (used with --no-deps is enough: only lightly.loss /
lightly.models are imported).

    python benchmarks/bench_ssl_step.py --device cuda --size vits14 --batch 64 --bf16 --compile
    python benchmarks/bench_ssl_step.py --device cpu --size small-test --batch 16 --global-size 56 --local-size 28 --prototypes 4096
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from vla_dino.encoder import DinoEncoder
from vla_dino.ssl import MultiCropAugmentation, MultiCropBatch, SSLConfig, SSLModel, SSLTrainer, StepResult

from step_recipe import add_recipe_arguments, recipe_config  # benchmarks/step_recipe.py (this script's folder)
from lightly_peer import LightlyStep  # benchmarks/lightly_peer.py (this script's folder), shared with ssl_peer_training.py


def make_config(args: argparse.Namespace, centering: str, pack_crops: bool = False) -> SSLConfig:
    config = recipe_config(args, args.batch, centering)
    config.optim.drop_path = 0.0  # same compute on both sides (lightly's example sets it on timm)
    config.optim.pack_crops = pack_crops  # student global + local crops in one backbone pass
    return config


class OursStep:
    name = "vla_dino.ssl"

    def __init__(self, encoder: DinoEncoder, config: SSLConfig, steps: int, compile: dict | None = None) -> None:
        model = SSLModel(config, encoder, total_steps=steps).to(next(encoder.parameters()).device).train()
        # fp32 inside: --bf16 wraps both implementations' whole step alike
        self.trainer = SSLTrainer(model, compile=compile)

    def step(self, batch: MultiCropBatch, step: int) -> StepResult:
        """The pretraining loop's step (`SSLTrainer.step`: non-finite guard and grad scaler included)."""
        return self.trainer.step(batch, step)

    def __call__(self, batch: MultiCropBatch, step: int) -> float:
        return self.step(batch, step).loss.item()


def measure(step_fn, batch: MultiCropBatch, device: torch.device, warmup: int, iters: int) -> tuple[float, float | None]:
    for i in range(warmup):
        step_fn(batch, i)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(iters):
        start = time.perf_counter()
        step_fn(batch, warmup + i)  # .item() inside synchronises
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    return statistics.median(times), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=32, help="images per step (each gives 2 global + L local crops)")
    add_recipe_arguments(parser)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast around both steps (CUDA)")
    parser.add_argument("--compile", action="store_true", help="add our Sinkhorn-Knopp rows with torch.compile")
    parser.add_argument("--compile-mode", default="default", help="torch.compile mode of the compiled rows")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)

    base = DinoEncoder.from_size(args.size)
    frames = torch.randint(0, 256, (args.batch, 3, args.frame_size, args.frame_size), dtype=torch.uint8, device=device)
    augment = MultiCropAugmentation.from_config(make_config(args, "softmax"), base.patch_size)
    batch = augment(frames)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    augment(frames)
    if device.type == "cuda":
        torch.cuda.synchronize()
    augment_s = time.perf_counter() - start

    rows = []
    compiled = {"mode": args.compile_mode}
    runs = [("lightly (softmax centering)", LightlyStep, "softmax", False, None),
            ("ours (softmax centering)", OursStep, "softmax", False, None),
            ("ours (Sinkhorn-Knopp)", OursStep, "sinkhorn", False, None),
            ("ours (Sinkhorn-Knopp, packed)", OursStep, "sinkhorn", True, None)]
    if args.compile:
        runs += [("ours (Sinkhorn-Knopp, compiled)", OursStep, "sinkhorn", False, compiled),
                 ("ours (SK, packed, compiled)", OursStep, "sinkhorn", True, compiled)]
    for label, cls, centering, pack_crops, compile_options in runs:
        torch._dynamo.reset()  # each compiled row compiles afresh (no recompiles carried over from another row)
        encoder = copy.deepcopy(base).to(device)
        config = make_config(args, centering, pack_crops)
        step_fn = cls(encoder, config, steps=1000) if compile_options is None else cls(encoder, config, 1000, compile_options)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)
        with autocast:
            seconds, peak = measure(step_fn, batch, device, args.warmup, args.iters)
        rows.append((label, seconds, peak))
        del step_fn, encoder
        if device.type == "cuda":
            torch.cuda.empty_cache()

    print(f"device {device}, encoder {args.size}, batch {args.batch} (2×{args.global_size}² + {args.num_local}×{args.local_size}²), "
          f"K={args.prototypes}, bf16={args.bf16}, median of {args.iters} after {args.warmup} warm-up steps")
    print(f"multi-crop augmentation of the batch on {device}: {augment_s * 1000:.1f} ms")
    peer_time, peer_mem = rows[0][1], rows[0][2]
    print(f"{'implementation':32s} {'step ms':>10s} {'peak MiB':>10s} {'time ratio peer/ours':>22s} {'mem ratio peer/ours':>20s}")
    for label, seconds, peak in rows:
        mem = f"{peak:10.0f}" if peak is not None else f"{'n/a':>10s}"
        ratio_t = peer_time / seconds
        ratio_m = f"{peer_mem / peak:20.2f}" if peak is not None else f"{'n/a':>20s}"
        print(f"{label:32s} {seconds * 1000:10.1f} {mem} {ratio_t:22.2f} {ratio_m}")


if __name__ == "__main__":
    main()
