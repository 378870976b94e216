"""DinoEncoder forward vs plain transformers forward of the same model, batch and size.

    python benchmarks/bench_encoder.py                       # CPU, ViT-S/14 at 224², batch 8
    python benchmarks/bench_encoder.py --device cuda --size vitl14_reg --batch 32 --dtype bfloat16

Rows: the final-layer forward (ours vs `Dinov2Model(pixel_values)`), and the second-to-last
block's tokens (ours: `get_intermediate_layers(x, -2)`, which stops after that block, vs
transformers with `output_hidden_states=True` and `hidden_states[-2]`, what users write by hand).
Timing is interleaved (ours, reference, ours, …) and the median is reported.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

from machine import machine_name  # benchmarks/machine.py (this script's folder)
from vla_dino import DinoEncoder


def timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def compare(ours: Callable[[], object], ref: Callable[[], object], device: torch.device, repeats: int) -> tuple[float, float]:
    for _ in range(3):  # warm-up (allocator, kernels, autotuning)
        ours(), ref()
    ours_times, ref_times = [], []
    for _ in range(repeats):
        ours_times.append(timed(ours, device))
        ref_times.append(timed(ref, device))
    return statistics.median(ours_times), statistics.median(ref_times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="vits14", help="encoder size name (random init), e.g. vits14, vitl14_reg")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    encoder = DinoEncoder.from_size(args.size).to(device, dtype).eval()
    model = encoder.model  # the very same transformers module, called directly
    x = torch.randn(args.batch, 3, args.resolution, args.resolution, device=device, dtype=dtype)

    rows = []
    with torch.inference_mode():
        rows.append(("last layer (normed)", *compare(lambda: encoder(x), lambda: model(x), device, args.repeats)))
        rows.append(
            (
                "block -2 (raw, OpenVLA)",
                *compare(
                    lambda: encoder.get_intermediate_layers(x, -2),
                    lambda: model(x, output_hidden_states=True).hidden_states[-2],
                    device,
                    args.repeats,
                ),
            )
        )

    print(f"DinoEncoder vs transformers {type(model).__name__}: {args.size}, batch {args.batch}, "
          f"{args.resolution}², {args.dtype}, on {machine_name(device)}")
    print(f"{'path':<26}{'ours ms':>10}{'transformers ms':>17}{'ours/ref':>10}")
    for name, ours_s, ref_s in rows:
        print(f"{name:<26}{ours_s * 1e3:>10.2f}{ref_s * 1e3:>17.2f}{ours_s / ref_s:>10.3f}")


if __name__ == "__main__":
    main()
