"""Pretraining throughput: what the data pipeline supplies per worker beside what a full
training step consumes, in frames/s, on this machine.

For each (model size, batch size):
  decode/worker  FrameDataset reads + square resize of generated PNG frames, one process
  multi-crop     MultiCropAugmentation on the training device (2 global + L local crops, masks)
  full step      multi-crop + SSLTrainer.step (forward, non-finite guard, backward, clip, AdamW, EMA teacher)
  workers        DataLoader workers needed to keep the step fed (full step ÷ decode/worker)

Then frames/s per stage of the data path, on a batch of 640×480 camera-like JPEGs (`where`: worker = one
DataLoader worker process, one thread; main = the training process; device = the training device): read bytes
(`defer_jpeg`'s worker: file + header check); decode (Pillow in the worker; torchvision's libjpeg-turbo; nvJPEG
batched on CUDA); resize (OpenCV in the worker; `square_resize_tensor` on the device); collate; one DataLoader
worker's output, today, with `defer_jpeg` and with `data.frame_cache`; `JpegBatchDecoder` (decode + resize + stack); host→device copy
(pageable, pinned); multi-crop; copy + multi-crop in turn vs with `DevicePrefetcher` overlapping them. Then
supply ÷ consumption for each (model, batch): one worker decoding as today, one reading `data.frame_cache`, and
(CUDA) one worker reading bytes while the main process decodes them on the GPU. Last, video sources at keyframe intervals 2 (LeRobot's encoding),
30 and 250 (libx264's default): one worker's random reads, the `data.frame_cache` build (in order) and random reads
from the cache.

    python benchmarks/bench_pretrain_throughput.py                       # CPU, tiny sizes
    python benchmarks/bench_pretrain_throughput.py --device cuda --sizes vits14 vitb14 --batch-sizes 32 64 \
        --preset vits14_scratch
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import random
import tempfile
import time
from pathlib import Path
from typing import Callable

import cv2
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.io import ImageReadMode, decode_jpeg

from bench_data_pipeline import camera_frame  # this script's folder
from machine import machine_name  # benchmarks/machine.py (this script's folder)
from vla_dino.data import (DevicePrefetcher, FrameCache, FrameDataset, JpegBatchDecoder, collate_frames, discover_sources, square_resize,
                           square_resize_tensor)
from vla_dino.data.examples import write_image_folder, write_video
from vla_dino.data.images import read_image, read_jpeg_bytes
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


def loader_rate(dataset: FrameDataset, batch: int, pin: bool, batches: int = 8) -> float:
    """Frames/s out of a DataLoader with one worker process: its reading and decoding, and the transfer here."""
    loader = DataLoader(dataset, batch_sampler=[list(range(batch))] * (batches + 1), collate_fn=collate_frames,
                        num_workers=1, pin_memory=pin)
    loaded = iter(loader)
    next(loaded)  # the worker's start-up
    start = time.perf_counter()
    for _ in loaded:
        pass
    return batches * batch / (time.perf_counter() - start)


def stage_rates(frame_size: int, batch: int, device: torch.device, augment: MultiCropAugmentation,
                repeats: int) -> tuple[list[tuple[str, str, float | None]], list[str]]:
    """(stage, where, frames/s or None where it does not apply) on `batch` 640×480 JPEG camera frames, and the
    checks that the device paths give what the CPU path gives."""
    cuda = device.type == "cuda"
    cv2.setNumThreads(1)  # as in a DataLoader worker
    rows: list[tuple[str, str, float | None]] = []
    checks: list[str] = []

    def rate(stage: str, where: str, fn: Callable[[], object], frames: int = batch, on: torch.device = device) -> None:
        rows.append((stage, where, frames / timed(fn, repeats, on)))

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "ep0" / "front"
        folder.mkdir(parents=True)
        files = [folder / f"{t:05d}.jpg" for t in range(batch)]
        for t, file in enumerate(files):
            Image.fromarray(camera_frame(t, 480, 640)).save(file, quality=90)
        sources = discover_sources([tmp])
        today = FrameDataset(sources, frame_size=frame_size)
        deferred = FrameDataset(sources, frame_size=frame_size, defer_jpeg=True)
        cpu = torch.device("cpu")

        encoded = [read_jpeg_bytes(file) for file in files]
        rate("read bytes + JPEG header check", "worker", lambda: [read_jpeg_bytes(file) for file in files], on=cpu)
        images = [read_image(file, frame_size) for file in files]
        rate(f"decode: Pillow, reduced DCT scale (≥ {frame_size}²)", "worker", lambda: [read_image(file, frame_size) for file in files], on=cpu)
        rate("decode: torchvision libjpeg-turbo, full size", "main", lambda: decode_jpeg(encoded, mode=ImageReadMode.RGB), on=cpu)
        if cuda:
            rate("decode: nvJPEG batched, full size", "device", lambda: decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device))
        rate("resize: square_resize (OpenCV)", "worker", lambda: [square_resize(image, frame_size) for image in images], on=cpu)
        full = torch.stack(decode_jpeg(encoded, mode=ImageReadMode.RGB)).to(device)
        rate("resize: square_resize_tensor", "device", lambda: square_resize_tensor(full, frame_size))
        samples = [today[i] for i in range(batch)]
        rate("collate", "worker", lambda: collate_frames(samples), on=cpu)
        rows.append(("1 DataLoader worker, today (all of the above)", "worker", loader_rate(today, batch, cuda)))
        rows.append(("1 DataLoader worker, defer_jpeg (bytes)", "worker", loader_rate(deferred, batch, cuda)))
        cache = FrameCache(Path(tmp) / "cache", frame_size)
        cache.build(sources, progress=False)
        cached = FrameDataset(sources, frame_size=frame_size, frame_cache=cache)
        rows.append(("1 DataLoader worker, data.frame_cache", "worker", loader_rate(cached, batch, cuda)))
        deferred_batch = collate_frames([deferred[i] for i in range(batch)])
        decoder = JpegBatchDecoder(deferred, device)
        rate("JpegBatchDecoder: decode + resize + stack", "device" if cuda else "main", lambda: decoder(deferred_batch))
        difference = (decoder(deferred_batch)["frame"].cpu().int() - collate_frames(samples)["frame"].int()).abs().float()
        checks.append(f"JpegBatchDecoder({device.type}) vs the workers' frames: mean |Δ| {difference.mean():.2f}, "
                      f"max {difference.max():.0f} grey levels (full-size decode + box average vs Pillow's reduced DCT scale)")

    frames = collate_frames(samples)["frame"]
    if cuda:
        pinned = frames.pin_memory()
        rate("host→device copy, pageable", "device", lambda: frames.to(device))
        rate("host→device copy, pinned", "device", lambda: pinned.to(device, non_blocking=True))
    else:
        rows += [("host→device copy, pageable", "device", None), ("host→device copy, pinned", "device", None)]
    on_device = frames.to(device)
    rate("multi-crop", "device", lambda: augment(on_device))
    if not cuda:  # DevicePrefetcher is a pass-through on CPU: nothing to overlap
        rows += [("copy + multi-crop, in turn", "device", None), ("copy + multi-crop, DevicePrefetcher", "device", None)]
        return rows, checks
    host_batches = [(frames + i).pin_memory() for i in range(4)]  # distinct batches: a mix-up would show

    def copy_and_crop(prefetch: bool) -> None:
        batches = DevicePrefetcher(host_batches, device) if prefetch else (b.to(device, non_blocking=True) for b in host_batches)
        for moved in batches:
            augment(moved)

    rate("copy + multi-crop, in turn", "device", lambda: copy_and_crop(False), frames=4 * batch)
    rate("copy + multi-crop, DevicePrefetcher", "device", lambda: copy_and_crop(True), frames=4 * batch)
    same = all(torch.equal(got.cpu(), want) for got, want in zip(DevicePrefetcher(host_batches, device), host_batches, strict=True))
    checks.append(f"DevicePrefetcher on {device}: {'the same batches in order' if same else 'BATCHES DIFFER'}")
    return rows, checks


def video_rates(frame_size: int, num_frames: int = 120, reads: int = 40) -> list[tuple[int, float, float, float]]:
    """(keyframe interval, random reads f/s, frame-cache build f/s, cached random reads f/s) for one worker on a
    640×480 H.264 video: without the cache a random read decodes from the keyframe before it."""
    cv2.setNumThreads(1)  # as in a DataLoader worker
    rows = []
    for gop in (2, 30, 250):
        with tempfile.TemporaryDirectory() as tmp:
            write_video(Path(tmp) / "ep0" / "front.mp4", num_frames, gop=gop, height=480, width=640)
            sources = discover_sources([tmp])
            order = random.Random(0).sample(range(num_frames), reads)

            def read_all(dataset: FrameDataset) -> float:
                dataset[order[0]]  # opens the file
                start = time.perf_counter()
                for index in order:
                    dataset[index]
                return reads / (time.perf_counter() - start)

            random_rate = read_all(FrameDataset(sources, frame_size=frame_size))
            cache = FrameCache(Path(tmp) / "cache", frame_size)
            start = time.perf_counter()
            cache.build(sources, progress=False)
            build_rate = num_frames / (time.perf_counter() - start)
            rows.append((gop, random_rate, build_rate, read_all(FrameDataset(sources, frame_size=frame_size, frame_cache=cache))))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", default="cpu_smoke", help="config preset giving crops, heads and optimiser")
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small-test"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[8, 16])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    parser.add_argument("--no-stages", action="store_true", help="skip the per-stage table")
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
    consumption: dict[tuple[str, int], float] = {}
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
            rate = consumption[size, batch] = batch / step_s
            print(f"{size:<12}{batch:>6}{decode:>19.1f}{batch / crop_s:>16.1f}{rate:>15.1f}{step_s * 1e3:>9.1f}{rate / decode:>9.2f}")
    if args.no_stages:
        return

    batch = max(args.batch_sizes)  # `augment`: the last model's (the crops are the preset's)
    stages, checks = stage_rates(config.data.frame_size, batch, device, augment, args.repeats)
    rows = {(stage, where): value for stage, where, value in stages}
    print(f"\n# data path per stage: batch {batch} of 640×480 JPEG camera frames → {config.data.frame_size}²")
    print(f"{'stage':<52}{'where':>8}{'frames/s':>11}")
    for (stage, where), value in rows.items():
        print(f"{stage:<52}{where:>8}{'-' if value is None else f'{value:.1f}':>11}")
    for check in checks:
        print(f"# check: {check}")
    print(f"\n# video sources: one worker reading 640×480 H.264 frames → {config.data.frame_size}² in random order, and "
          f"with data.frame_cache (built once, in order)")
    print(f"{'keyframe interval':>17}{'random reads f/s':>18}{'cache build f/s':>17}{'cached reads f/s':>18}")
    for gop, random_rate, build_rate, cached_rate in video_rates(config.data.frame_size):
        print(f"{gop:>17}{random_rate:>18.1f}{build_rate:>17.1f}{cached_rate:>18.1f}")
    today = rows["1 DataLoader worker, today (all of the above)", "worker"]
    cached = rows["1 DataLoader worker, data.frame_cache", "worker"]
    reading = rows["1 DataLoader worker, defer_jpeg (bytes)", "worker"]
    decoding = next(value for (stage, _), value in rows.items() if stage.startswith("JpegBatchDecoder"))
    print("\n# supply ÷ consumption (full step); ≥ 2 = the issue's headroom goal")
    print(f"{'model':<12}{'batch':>6}{'1 worker, today':>17}{'1 worker, frame cache':>23}{'1 worker reading + GPU decoding':>33}")
    for (size, step_batch), rate in consumption.items():
        # on CPU the main process's decode takes cores from the step: not a supply worth adding
        deferred = f"{min(reading, decoding) / rate:>32.2f}×" if device.type == "cuda" else f"{'-':>33}"
        print(f"{size:<12}{step_batch:>6}{today / rate:>16.2f}×{cached / rate:>22.2f}×{deferred}")


if __name__ == "__main__":
    main()
