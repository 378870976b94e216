"""DDP scaling of the pretraining step: measured at the process counts this machine has, and a model
for more from measured all-reduce bandwidth and step compute.

    python benchmarks/bench_ddp_scaling.py --device cpu --size small-test --batch 8 --procs 1 2   # gloo, one core each
    python benchmarks/bench_ddp_scaling.py --device cuda --size vits14 --batch 64 --procs 1 2 4 8 --bf16

Each world size W runs W processes (torch.multiprocessing, gloo on CPU, NCCL on CUDA), each wrapping the
`SSLModel` in DDP exactly as the pretraining run does (`vla_dino.pretrain.distributed.wrap_model`) and
timing `SSLTrainer.step` at `--batch` frames per process (weak scaling: the global batch grows with W).
The largest W also times an all-reduce of the student's gradient bytes (DDP's traffic per step).

Efficiency(W) = throughput(W) / (W · throughput(1)). The model for a world size N beside the measured rows:
a ring all-reduce of G gradient bytes takes 2 (N − 1) / N · G / busbw, where busbw is the bus bandwidth
measured here (or `--busbw-gbs`, e.g. NCCL's all_reduce_perf figure for a node one does not have). DDP
overlaps it with the backward pass, so the step lies between step(1) (fully hidden) and step(1) + t_allreduce
(not hidden at all); both bounds are printed. The step's small collectives (Sinkhorn-Knopp's row sums, the
non-finite flag) are latency, not bandwidth, and are inside the measured rows only. Each measured world size
also times the step under DDP's `no_sync` (no gradient all-reduce): when that is slower than world 1, the ranks
slow each other down without communicating (CPU processes sharing cores and memory bandwidth), which the model
for separate GPUs leaves out.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from machine import cpu_model, machine_name  # benchmarks/machine.py (this script's folder)
from vla_dino.encoder import DinoEncoder
from vla_dino.pretrain import distributed as D
from step_recipe import add_recipe_arguments, recipe_config  # benchmarks/step_recipe.py (this script's folder)
from vla_dino.ssl import MultiCropAugmentation, SSLModel, SSLTrainer


def worker(rank: int, world: int, args: argparse.Namespace, port: int, results: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world))
    torch.set_num_threads(args.threads)
    info = D.init_distributed(args.device if args.device == "cpu" else "cuda", "auto")
    torch.manual_seed(0)  # the same initial weights on every rank, as a run's seeded init
    encoder = DinoEncoder.from_size(args.size)
    config = recipe_config(args, args.batch * world)
    model = SSLModel(config, encoder, total_steps=1000).to(info.device).train()
    forward = D.wrap_model(model, "ddp", info)
    trainer = SSLTrainer(model, "bf16" if args.bf16 else "fp32", forward=forward, any_rank=lambda f: D.any_rank(f, info))
    torch.manual_seed(1 + rank)
    frames = torch.randint(0, 256, (args.batch, 3, args.frame_size, args.frame_size), dtype=torch.uint8, device=info.device)
    batch = MultiCropAugmentation.from_config(config, encoder.patch_size)(frames)

    def sync() -> None:
        if info.device.type == "cuda":
            torch.cuda.synchronize()
        D.barrier(info)

    def median_step(no_gradient_sync: bool) -> float:
        times = []
        for step in range(args.warmup + args.iters):
            # DDP's no_sync: the same step without the gradient all-reduce (the step's own small collectives stay)
            with forward.no_sync() if no_gradient_sync else contextlib.nullcontext():
                start = time.perf_counter()
                trainer.step(batch, step)
                sync()
            times.append(time.perf_counter() - start)
        return statistics.median(times[args.warmup:])

    step_s = median_step(no_gradient_sync=False)
    compute_s = median_step(no_gradient_sync=True) if world > 1 else step_s
    grad_bytes = sum(p.numel() * p.element_size() for p in model.student.parameters() if p.requires_grad)
    allreduce_s = None
    if world > 1:  # DDP's traffic per step: one all-reduce of every gradient byte (in buckets, overlapped)
        grads = torch.zeros(grad_bytes // 4, dtype=torch.float32, device=info.device)
        laps = []
        for _ in range(args.iters + 2):
            sync()
            start = time.perf_counter()
            dist.all_reduce(grads)
            sync()
            laps.append(time.perf_counter() - start)
        allreduce_s = statistics.median(laps[2:])
    if rank == 0:
        results[world] = {"step_s": step_s, "compute_s": compute_s, "grad_bytes": grad_bytes, "allreduce_s": allreduce_s}
    D.cleanup()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch", type=int, default=64, help="frames per process per step")
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2], help="world sizes to measure (1 first)")
    parser.add_argument("--model-procs", type=int, nargs="+", default=[2, 8, 16, 64], help="world sizes to model")
    parser.add_argument("--busbw-gbs", type=float, help="all-reduce bus bandwidth in GB/s for the model (default: measured)")
    add_recipe_arguments(parser)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (CPU)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA)")
    args = parser.parse_args()
    if args.procs[0] != 1:
        parser.error("--procs must start with 1 (the single-process baseline)")
    if args.device == "cuda" and max(args.procs) > torch.cuda.device_count():
        parser.error(f"--procs {max(args.procs)} > {torch.cuda.device_count()} visible GPU(s)")

    results = mp.Manager().dict()
    for world in args.procs:
        mp.spawn(worker, args=(world, args, free_port(), results), nprocs=world, join=True)

    base = results[1]
    where = machine_name(args.device) if args.device == "cuda" else f"{cpu_model()}, {args.threads} torch thread(s) per process"
    print(f"{where}; encoder {args.size}, {args.batch} frames per process "
          f"(2×{args.global_size}² + {args.num_local}×{args.local_size}²), K={args.prototypes}, bf16={args.bf16}, "
          f"median of {args.iters}; gradients {base['grad_bytes'] / 2**20:.1f} MiB per step")
    print("no-sync: the same step without DDP's gradient all-reduce (what each rank computes at that world size); "
          "exposed: step − no-sync")
    print(f"{'world':>5s} {'kind':>9s} {'step ms':>9s} {'frames/s':>10s} {'efficiency':>11s} {'no-sync ms':>11s} {'exposed ms':>11s}")
    for world in args.procs:
        row = results[world]
        throughput = world * args.batch / row["step_s"]
        efficiency = throughput / (world * args.batch / base["step_s"])
        print(f"{world:5d} {'measured':>9s} {row['step_s'] * 1000:9.1f} {throughput:10.1f} {efficiency:11.1%} "
              f"{row['compute_s'] * 1000:11.1f} {(row['step_s'] - row['compute_s']) * 1000:11.1f}")

    measured = [(w, results[w]["allreduce_s"]) for w in args.procs if results[w]["allreduce_s"]]
    if args.busbw_gbs is not None:
        busbw, source = args.busbw_gbs * 1e9, "given"
    elif measured:
        world, seconds = measured[-1]
        busbw, source = 2 * (world - 1) / world * base["grad_bytes"] / seconds, f"measured at world {world}"
    else:
        print("no all-reduce measured (only world 1) and no --busbw-gbs: no model rows")
        return
    print(f"model: all-reduce bus bandwidth {busbw / 1e9:.2f} GB/s ({source}); step between fully hidden and not hidden comm")
    for world in args.model_procs:
        comm = 2 * (world - 1) / world * base["grad_bytes"] / busbw
        worst = base["step_s"] / (base["step_s"] + comm)
        print(f"{world:5d} {'model':>9s} {(base['step_s'] + comm) * 1000:9.1f} "
              f"{world * args.batch / (base['step_s'] + comm):10.1f} {worst:6.1%}–100%   (all-reduce {comm * 1000:.2f} ms)")


if __name__ == "__main__":
    main()
