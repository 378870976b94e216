"""Model FLOPs utilisation of the pretraining step: FLOPs counted by torch, time measured, ratio to the device's peak.

For each ViT size, one `SSLTrainer.step` (the step `vla_dino.pretrain` runs: teacher forward on the 2 global crops,
student forward on global + local crops, DINO + iBOT + KoLeo, backward, clip, AdamW, EMA) is run once under
`torch.utils.flop_counter.FlopCounterMode`, which counts the FLOPs of every matmul / convolution / attention
(forward and backward, 2 FLOPs per multiply-add; elementwise ops, normalisation, softmax and the optimiser are not
counted, as in the usual MFU convention of PaLM / nanoGPT). Then the median of `--iters` timed steps gives

    achieved TFLOP/s = counted FLOPs / step time        MFU = achieved / peak

The peak is the device's dense tensor-core figure for the step's precision (table below, from the vendors' data
sheets) or `--peak-tflops`. Also printed: the analytic estimate of the backbones' share (forward 2·params·tokens plus
attention 4·tokens²·dim per block; backward 2× forward; the teacher forward only), beside the counted total, which
adds the DINO / iBOT heads (large with K = 65536 prototypes: 2·256·K FLOPs per CLS or masked patch token and pass).

    python benchmarks/bench_mfu.py --device cuda --sizes vits14 vitb14 vitl14 --batch 64 --precision bf16
    python benchmarks/bench_mfu.py                       # CPU: tiny sizes and crops, MFU against --peak-tflops if given
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from machine import machine_name  # benchmarks/machine.py (this script's folder)
from vla_dino.encoder import DinoEncoder
from vla_dino.ssl import MultiCropAugmentation, SSLConfig, SSLModel, SSLTrainer

# Dense (no sparsity) peak TFLOP/s by precision, from NVIDIA's data sheets (SXM parts).
PEAK_TFLOPS = {
    "H100": {"bf16": 989.4, "fp16": 989.4, "fp32": 494.7},  # fp32 = TF32 tensor cores
    "H200": {"bf16": 989.4, "fp16": 989.4, "fp32": 494.7},
    "A100": {"bf16": 312.0, "fp16": 312.0, "fp32": 156.0},
}


def device_peak(device: torch.device, precision: str) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peaks[precision] for part, peaks in PEAK_TFLOPS.items() if part in name), None)


def make_config(args: argparse.Namespace, batch: int) -> SSLConfig:
    config = SSLConfig()
    crops = config.crops
    crops.global_size, crops.local_size, crops.num_local = args.global_size, args.local_size, args.num_local
    config.heads.num_prototypes = args.prototypes
    config.optim.batch_size = batch
    return config


def analytic_flops(encoder: DinoEncoder, batch: int, config: SSLConfig) -> float:
    """Analytic backbone matmul FLOPs of one step: student fwd+bwd (3×) on all crops, teacher fwd (1×) on the global ones."""
    dim, layers, patch = encoder.hidden_size, encoder.num_layers, encoder.patch_size
    prefix = 1 + encoder.num_register_tokens
    block_params = (4 + 2 * encoder.config.mlp_ratio) * dim * dim  # qkv + proj (4d²) + MLP (2·ratio·d²)

    def forward(crop: int, count: int) -> float:
        tokens = (crop // patch) ** 2 + prefix
        return count * layers * (2 * block_params * tokens + 4 * tokens * tokens * dim)

    crops = config.crops
    global_fwd = forward(crops.global_size, 2 * batch)
    local_fwd = forward(crops.local_size, crops.num_local * batch)
    return 3 * (global_fwd + local_fwd) + global_fwd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cuda = torch.cuda.is_available()
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--sizes", nargs="+", default=["vits14", "vitb14", "vitl14"] if cuda else ["small-test", "tiny"])
    parser.add_argument("--batch", type=int, default=64 if cuda else 8, help="images per step (2 global + L local crops each)")
    parser.add_argument("--global-size", type=int, default=224 if cuda else 56)
    parser.add_argument("--local-size", type=int, default=98 if cuda else 28)
    parser.add_argument("--num-local", type=int, default=8 if cuda else 2)
    parser.add_argument("--prototypes", type=int, default=65536 if cuda else 1024)
    parser.add_argument("--precision", default="bf16" if cuda else "fp32", choices=["bf16", "fp16", "fp32"])
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's peak for --precision (default: table)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    peak = args.peak_tflops or device_peak(device, args.precision)

    print(f"# MFU of SSLTrainer.step on {machine_name(device)}, {args.precision}, batch {args.batch} "
          f"(2×{args.global_size}² + {args.num_local}×{args.local_size}²), K={args.prototypes}, "
          f"peak {f'{peak:.1f} TFLOP/s' if peak else 'unknown (pass --peak-tflops)'}")
    print(f"{'model':<12}{'counted GFLOP':>15}{'backbones GFLOP':>17}{'step ms':>10}{'TFLOP/s':>10}{'MFU':>8}")
    for size in args.sizes:
        torch.manual_seed(0)
        config = make_config(args, args.batch)
        encoder = DinoEncoder.from_size(size)
        model = SSLModel(config, encoder, total_steps=1000).to(device).train()
        trainer = SSLTrainer(model, precision=args.precision)
        augment = MultiCropAugmentation.from_config(config, encoder.patch_size)
        frames = torch.randint(0, 256, (args.batch, 3, args.global_size + 32, args.global_size + 32), dtype=torch.uint8, device=device)
        crops = augment(frames)
        with FlopCounterMode(display=False) as counter:
            trainer.step(crops, 0)
        flops = counter.get_total_flops()
        for step in range(1, args.warmup + 1):
            trainer.step(crops, step)
        times = []
        for step in range(args.warmup + 1, args.warmup + 1 + args.iters):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            trainer.step(crops, step).loss.item()  # .item(): the step's work is done when the clock stops
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        achieved = flops / seconds / 1e12
        mfu = f"{100 * achieved / peak:7.1f}%" if peak else f"{'n/a':>8}"
        print(f"{size:<12}{flops / 1e9:>15.1f}{analytic_flops(encoder, args.batch, config) / 1e9:>17.1f}"
              f"{seconds * 1e3:>10.1f}{achieved:>10.3f}{mfu}")
        del model, trainer, encoder
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
