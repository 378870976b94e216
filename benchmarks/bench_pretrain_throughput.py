"""Pretraining throughput: what the data pipeline supplies per worker beside what a full
training step consumes, in frames/s, on this machine.

For each (model size, batch size):
  decode/worker  FrameDataset reads + square resize of generated PNG frames, one process
  multi-crop     MultiCropAugmentation on the training device (2 global + L local crops, masks)
  full step      multi-crop + SSLTrainer.step (forward, non-finite guard, backward, clip, AdamW, EMA teacher)
  workers        DataLoader workers needed to keep the step fed (full step ÷ decode/worker)

    python benchmarks/bench_pretrain_throughput.py                       # CPU, tiny sizes
    python benchmarks/bench_pretrain_throughput.py --device cuda --sizes vits14 vitb14 --batch-sizes 32 64 \
        --preset vits14_scratch
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import tempfile
import time
from pathlib import Path

import torch

from machine import machine_name  # benchmarks/machine.py (this script's folder)
from vla_dino.data import FrameDataset, collate_frames, discover_sources
from vla_dino.data.examples import write_image_folder
from vla_dino.encoder import DinoEncoder
from vla_dino.pretrain.config import load_config, preset_path
from vla_dino.ssl import MultiCropAugmentation, SSLModel, SSLTrainer


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, repeats: int, device: torch.device) -> float:
    """Median seconds per call after one warm-up call."""
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def decode_rate(dataset: FrameDataset, batch: int, repeats: int) -> float:
    indices = list(range(len(dataset)))

    def read() -> None:
        collate_frames([dataset[i % len(dataset)] for i in indices[:batch]])

    return batch / timed(read, repeats, torch.device("cpu"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", default="cpu_smoke", help="config preset giving crops, heads and optimiser")
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small-test"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[8, 16])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    args = parser.parse_args()

    device = torch.device(args.device)
    config = load_config(preset_path(args.preset))
    bf16 = args.precision == "bf16" or (args.precision == "auto" and device.type == "cuda")

    with tempfile.TemporaryDirectory() as tmp:
        for episode in range(2):
            write_image_folder(Path(tmp) / f"ep{episode}", 32, episode=episode, height=480, width=640)
        dataset = FrameDataset(discover_sources([tmp]), frame_size=config.data.frame_size)
        decode = decode_rate(dataset, 32, args.repeats)
        frames_cpu = collate_frames([dataset[i % len(dataset)] for i in range(max(args.batch_sizes))])["frame"]

    c = config.ssl.crops
    print(f"# pretraining throughput on {machine_name(device)}")
    print(f"# preset {args.preset}: frames {config.data.frame_size}², crops 2×{c.global_size}² + {c.num_local}×{c.local_size}², "
          f"{'bf16' if bf16 else 'fp32'}; decode from 640×480 PNG")
    print(f"{'model':<12}{'batch':>6}{'decode/worker f/s':>19}{'multi-crop f/s':>16}{'full step f/s':>15}{'step ms':>9}{'workers':>9}")
    for size in args.sizes:
        for batch in args.batch_sizes:
            torch.manual_seed(0)
            encoder = DinoEncoder.from_size(size, **config.model.encoder_overrides)
            # the lr-scaling batch pinned to the global batch, as vla_dino.pretrain.train does
            ssl = dataclasses.replace(config.ssl, optim=dataclasses.replace(config.ssl.optim, batch_size=batch))
            model = SSLModel(ssl, encoder, total_steps=1000).to(device).train()
            trainer = SSLTrainer(model, precision="bf16" if bf16 else "fp32")
            augment = MultiCropAugmentation.from_config(config.ssl, patch_size=encoder.patch_size)
            frames = frames_cpu[:batch].repeat(math.ceil(batch / frames_cpu.shape[0]), 1, 1, 1)[:batch].to(device)
            step = [0]

            def full_step() -> None:  # the loop body of vla_dino.pretrain.train
                trainer.step(augment(frames), step[0])
                step[0] += 1

            crop_s = timed(lambda: augment(frames), args.repeats, device)
            step_s = timed(full_step, args.repeats, device)
            rate = batch / step_s
            print(f"{size:<12}{batch:>6}{decode:>19.1f}{batch / crop_s:>16.1f}{rate:>15.1f}{step_s * 1e3:>9.1f}{rate / decode:>9.2f}")


if __name__ == "__main__":
    main()
