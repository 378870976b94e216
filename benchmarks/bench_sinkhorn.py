"""Sinkhorn-Knopp teacher targets: ours (`vla_dino.ssl.sinkhorn_knopp`, scaling vectors and matrix-vector
products) beside upstream DINOv2's loop (`dinov2/loss/dino_clstoken_loss.py`, `sinkhorn_knopp_teacher`, written
out below as it is there, single process), on the same logits.

    python benchmarks/bench_sinkhorn.py                          # CPU: CLS rows and a smaller patch matrix
    python benchmarks/bench_sinkhorn.py --device cuda --rows 128 8192 --prototypes 65536

Rows: B = 2 × batch for the DINO CLS targets (128 at batch 64) and B = the masked patches for iBOT (≈ 8k at
ViT-S/14, batch 64, 2×224²: 128 crops × 256 patches × half masked × ratios 0.1–0.5). Prints the median time of
each, the ratio upstream / ours and the largest difference of the targets.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from machine import machine_name  # benchmarks/machine.py (this script's folder)
from vla_dino.ssl import sinkhorn_knopp


@torch.no_grad()
def upstream_sinkhorn_knopp(teacher_output: torch.Tensor, teacher_temp: float, n_iterations: int = 3) -> torch.Tensor:
    """facebookresearch/dinov2 `DINOLoss.sinkhorn_knopp_teacher` (the distributed all-reduces are identities here)."""
    teacher_output = teacher_output.float()
    Q = torch.exp(teacher_output / teacher_temp).t()  # Q is K-by-B for consistency with notations from the paper
    B = Q.shape[1]
    K = Q.shape[0]  # how many prototypes
    sum_Q = torch.sum(Q)
    Q /= sum_Q
    for _ in range(n_iterations):
        sum_of_rows = torch.sum(Q, dim=1, keepdim=True)
        Q /= sum_of_rows
        Q /= K
        Q /= torch.sum(Q, dim=0, keepdim=True)
        Q /= B
    Q *= B  # the columns must sum to 1 so that Q is an assignment
    return Q.t()


def median_ms(fn, logits: torch.Tensor, iters: int) -> float:
    times = []
    for i in range(iters + 1):
        if logits.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn(logits, 0.07)
        if logits.is_cuda:
            torch.cuda.synchronize()
        if i:  # the first call warms up
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rows", type=int, nargs="+", default=[128, 2048], help="B values (samples or masked patches)")
    parser.add_argument("--prototypes", type=int, default=65536)
    parser.add_argument("--iters", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    print(f"{machine_name(device)}; K = {args.prototypes}, 3 iterations, τ = 0.07, fp32, median of {args.iters}")
    print(f"{'B':>6s} {'upstream ms':>12s} {'ours ms':>9s} {'upstream/ours':>14s} {'max |Δ|':>9s}")
    for rows in args.rows:
        # cosine logits of a normalised head, as the DINO head's weight-normed last layer gives
        logits = torch.nn.functional.normalize(torch.randn(rows, args.prototypes, device=device), dim=1) * 10
        reference, ours = median_ms(upstream_sinkhorn_knopp, logits, args.iters), median_ms(sinkhorn_knopp, logits, args.iters)
        diff = (sinkhorn_knopp(logits, 0.07) - upstream_sinkhorn_knopp(logits, 0.07)).abs().max().item()
        print(f"{rows:6d} {reference:12.1f} {ours:9.1f} {reference / ours:14.2f} {diff:9.2e}")


if __name__ == "__main__":
    main()
