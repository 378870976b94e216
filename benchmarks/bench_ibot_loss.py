"""iBOT's student loss: the (M × K) logits path against `prototype_cross_entropy`, which never stores them.

Both take the head's normalised bottleneck features (M, d) and prototypes (K, d) and the teacher's targets (M, K),
and run forward + backward. "logits" is the path before (and lightly's: `F.linear` to (M, K) logits, then
log-softmax and the soft cross-entropy, as `IBOTPatchLoss` does on the head's output); "chunked" is ours. Prints
step time, peak memory above what the inputs hold (CUDA: `max_memory_allocated`; CPU: resident set size sampled
every 0.5 ms, a lower bound) and the ratios, and checks that loss and gradients agree.

    python benchmarks/bench_ibot_loss.py                                # CPU: M = 1024, K = 65536
    python benchmarks/bench_ibot_loss.py --device cuda --rows 4096 8192 --bf16
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from machine import machine_name  # benchmarks/machine.py (this script's folder)
from vla_dino.ssl.losses import cross_entropy, prototype_cross_entropy


def logits_path(features, prototypes, targets, temp, weights):
    return (cross_entropy(F.linear(features, prototypes), targets, temp) * weights).sum()


class PeakRSS:
    """Highest resident set size while inside, sampled by a thread (CPU tensors this large are mmap'd and
    returned on free, so the RSS follows them)."""

    def __init__(self) -> None:
        self.page = os.sysconf("SC_PAGE_SIZE")

    def rss(self) -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * self.page

    def __enter__(self) -> "PeakRSS":
        self.base = self.peak = self.rss()
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.rss())
            time.sleep(0.0005)

    def __exit__(self, *exc) -> None:
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self.rss())


def run(fn, inputs, device: torch.device, bf16: bool, iters: int) -> tuple[float, float, tuple]:
    """Median ms of forward + backward, peak MiB above the inputs, and (loss, grads) of the last call."""
    features, prototypes, targets, weights = inputs
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    times, peaks = [], []
    for _ in range(iters + 1):  # the first call warms up
        features.grad = prototypes.grad = None
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        monitor = PeakRSS() if device.type == "cpu" else nullcontext()
        with monitor:
            start = time.perf_counter()
            with autocast:
                loss = fn(features, prototypes, targets, 0.1, weights)
            loss.backward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append((time.perf_counter() - start) * 1e3)
        peak = torch.cuda.max_memory_allocated(device) - base if device.type == "cuda" else monitor.peak - monitor.base
        peaks.append(peak / 2**20)
    return statistics.median(times[1:]), max(peaks[1:]), (loss.detach(), features.grad.clone(), prototypes.grad.clone())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rows", type=int, nargs="+", default=[1024], help="masked patches M (ViT-S/14, batch 64: ~5k)")
    parser.add_argument("--prototypes", type=int, default=65536)
    parser.add_argument("--dim", type=int, default=256, help="bottleneck dimension d")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (the logits in bf16, softmax in fp32)")
    parser.add_argument("--iters", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    print(f"iBOT student loss on {machine_name(device)}: K = {args.prototypes}, d = {args.dim}, bf16 = {args.bf16}, median of {args.iters}")
    print(f"{'M rows':>7} {'logits ms':>10} {'chunked ms':>11} {'time ratio':>11} {'logits MiB':>11} "
          f"{'chunked MiB':>12} {'memory ratio':>13} {'max |Δ grad|':>13}")
    for rows in args.rows:
        features = F.normalize(torch.randn(rows, args.dim, device=device), dim=-1).requires_grad_()
        prototypes = F.normalize(torch.randn(args.prototypes, args.dim, device=device), dim=-1).requires_grad_()
        targets = torch.softmax(torch.randn(rows, args.prototypes, device=device) / 0.05, dim=-1)
        weights = torch.full((rows,), 1.0 / rows, device=device)
        inputs = (features, prototypes, targets, weights)
        plain_ms, plain_mib, plain = run(logits_path, inputs, device, args.bf16, args.iters)
        fused_ms, fused_mib, fused = run(prototype_cross_entropy, inputs, device, args.bf16, args.iters)
        torch.testing.assert_close(fused[0], plain[0], rtol=1e-4, atol=1e-5)
        delta = max((a - b).abs().max().item() for a, b in zip(fused[1:], plain[1:]))
        print(f"{rows:>7} {plain_ms:>10.1f} {fused_ms:>11.1f} {plain_ms / fused_ms:>10.2f}× {plain_mib:>11.0f} "
              f"{fused_mib:>12.0f} {plain_mib / max(fused_mib, 1e-9):>12.2f}× {delta:>13.1e}")


if __name__ == "__main__":
    main()
