"""What an epoch boundary costs the training loop: the wait for the next batch at the start of each epoch,
with one DataLoader per epoch (`dataset.set_epoch(e)` then a new loader, the usual PyTorch loop and ours until
2026-12) beside the pretraining loop's batch stream (one loader for the whole run, each index carrying its epoch).

    python benchmarks/bench_epoch_boundary.py                     # 192 JPEGs 640×480 → 224², batch 16, 2 workers
    python benchmarks/bench_epoch_boundary.py --frames 1024 --batch 64 --workers 4 --step-ms 150

Both read the same files in the same order; a sleep of --step-ms stands in for the training step. Prints the
median wait for the first batch of an epoch and for the other batches, and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from machine import cpu_model  # benchmarks/machine.py (this script's folder)
from vla_dino.data import FrameDataset, collate_frames
from vla_dino.pretrain import distributed as D
from vla_dino.pretrain.config import load_config, preset_path
from vla_dino.pretrain.sampler import ResumableBatchSampler
from vla_dino.pretrain.train import TrainPosition, batch_stream, open_frames


def loader_per_epoch(dataset: FrameDataset, sampler: ResumableBatchSampler, workers: int) -> Iterator[dict]:
    """The per-epoch pattern: set the dataset's epoch, build a loader (its workers fork), iterate it."""
    epoch = 0
    while True:
        dataset.set_epoch(epoch)
        batches = [[index for index, _ in batch] for _, batch in zip(range(sampler.batches_per_epoch), sampler.batches(epoch))]
        yield from DataLoader(dataset, batch_sampler=batches, collate_fn=collate_frames, num_workers=workers)
        epoch += 1


def waits(stream: Iterator, batches_per_epoch: int, steps: int, step_s: float) -> tuple[list[float], list[float]]:
    """(waits for an epoch's first batch, waits for the others), the run's very first batch left out."""
    first, other = [], []
    next(stream)
    for step in range(1, steps):
        time.sleep(step_s)
        start = time.perf_counter()
        next(stream)
        (first if step % batches_per_epoch == 0 else other).append(time.perf_counter() - start)
    return first, other


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=192)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--frame-size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--step-ms", type=float, default=50.0, help="the training step's time, slept")
    args = parser.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "episode_0" / "front"
        folder.mkdir(parents=True)
        rng = np.random.default_rng(0)
        for t in range(args.frames):
            Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(folder / f"{t:05d}.jpg", quality=85)
        config = load_config(preset_path("cpu_smoke"), {
            "data.frames": [tmp], "data.batch_size": args.batch, "data.num_workers": args.workers,
            "data.frame_size": args.frame_size, "output_dir": str(Path(tmp) / "run")})
        info = D.DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
        _, dataset, _ = open_frames(config, info)
        sampler = ResumableBatchSampler(len(dataset), args.batch, config.train.seed)
        steps = args.epochs * sampler.batches_per_epoch
        rows = {
            "one loader per epoch (set_epoch)": waits(loader_per_epoch(dataset, sampler, args.workers),
                                                      sampler.batches_per_epoch, steps, args.step_ms / 1000),
            "vla_dino: one loader per run": waits((batch for batch, _ in batch_stream(dataset, sampler, TrainPosition(),
                                                                                          config, info.device)),
                                                  sampler.batches_per_epoch, steps, args.step_ms / 1000),
        }

    print(f"{cpu_model()}; {args.frames} JPEGs 640×480 → {args.frame_size}², batch {args.batch}, {args.workers} workers, "
          f"{sampler.batches_per_epoch} batches an epoch, step {args.step_ms:g} ms, {args.epochs} epochs")
    print(f"{'loader':36s} {'epoch start wait ms':>20s} {'other batches ms':>17s}")
    for name, (first, other) in rows.items():
        print(f"{name:36s} {statistics.median(first) * 1000:20.1f} {statistics.median(other) * 1000:17.1f}")
    reference, ours = (statistics.median(first) for first, _ in rows.values())
    print(f"epoch-start wait, per-epoch loaders / ours: {reference / ours:.1f}x")


if __name__ == "__main__":
    main()
