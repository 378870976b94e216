"""Frames per second of the data pipeline, for one DataLoader worker (one process, one thread).

    python benchmarks/bench_data_pipeline.py                    # CPU, 640×480 camera frames → 224²
    python benchmarks/bench_data_pipeline.py --device cuda      # multi-crop on the GPU (decode stays on CPU)

Rows, each ours beside what a user would otherwise write, on the same files, in random order:
- images:  FrameDataset over a JPEG folder (Pillow draft decoding + OpenCV area resize) vs
           Pillow `open().convert("RGB")` + torchvision Resize(S) + CenterCrop(S) + PILToTensor;
- video:   FrameDataset over an H.264 mp4 (seek + decode, one thread) vs lerobot's
           `decode_video_frames(..., backend="pyav")` per frame + the same resize;
- video, sequential stride 2: the same file read in order (how a strided epoch of one episode reads);
- hdf5:    FrameDataset over a robomimic file vs h5py indexing + the same resize;
- decode + multi-crop (if `vla_dino.ssl.MultiCropAugmentation` exists): FrameDataset + collate +
  batched MultiCropAugmentation (2×224² + 8×98², masks) vs per-image torchvision v2 transforms of
  the DINOv2 recipe (what the upstream DataAugmentationDINO does), both from JPEG files.
The default run takes well under a minute on CPU.
"""

from __future__ import annotations

import argparse
import platform
import random
import tempfile
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from machine import cpu_model  # benchmarks/machine.py (this script's folder)
from vla_dino.data import FrameDataset, collate_frames, discover_sources


def camera_frame(t: int, height: int, width: int) -> np.ndarray:
    """A camera-like frame: smooth gradients, moving shapes and sensor noise (so JPEG/H.264 work)."""
    rng = np.random.default_rng(t)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    frame = np.stack([x / width * 200, y / height * 180, np.full_like(x, 90)], axis=-1)
    cx, cy = (0.3 + 0.02 * t) % 1.0 * width, 0.5 * height
    frame[(x - cx) ** 2 + (y - cy) ** 2 < (0.12 * height) ** 2] = (220, 60, 40)
    frame += rng.normal(0, 6, frame.shape)
    return frame.clip(0, 255).astype(np.uint8)


def make_logs(root: Path, num_frames: int, height: int, width: int) -> dict[str, Path]:
    frames = [camera_frame(t, height, width) for t in range(num_frames)]
    jpg_dir = root / "ep0" / "front"
    jpg_dir.mkdir(parents=True)
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(jpg_dir / f"{t:05d}.jpg", quality=90)
    video = root / "ep0" / "front.mp4"
    import av

    with av.open(str(video), mode="w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast", "g": "30", "crf": "23"}  # GOP 30: a typical camera log
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    hdf5 = root / "demo.hdf5"
    import h5py

    with h5py.File(hdf5, "w") as handle:
        handle["data/demo_0/obs/agentview_image"] = np.stack(frames)
    return {"images": jpg_dir, "video": video, "hdf5": hdf5}


def rate(fn: Callable[[int], int], indices: list[int], seconds: float) -> float:
    """Frames per second of fn(index) (returns frames produced) over `indices`, cycling until `seconds`."""
    fn(indices[0])  # warm-up: opens files, builds indexes
    done, start, position = 0, time.perf_counter(), 0
    while time.perf_counter() - start < seconds or done < 8:
        done += fn(indices[position % len(indices)])
        position += 1
    return done / (time.perf_counter() - start)


def reference_resize(size: int) -> v2.Compose:
    return v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size)])


def dinov2_reference_augmentation() -> Callable[[torch.Tensor], list[torch.Tensor]]:
    """Per-image DINOv2 multi-crop with torchvision v2 (upstream DataAugmentationDINO's recipe)."""
    flip_jitter = v2.Compose([
        v2.RandomHorizontalFlip(0.5),
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
        v2.RandomGrayscale(0.2),
    ])
    normalise = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    blur = lambda p: v2.RandomApply([v2.GaussianBlur(9, (0.1, 2.0))], p=p)  # noqa: E731
    global1 = v2.Compose([v2.RandomResizedCrop(224, (0.32, 1.0), interpolation=v2.InterpolationMode.BICUBIC), flip_jitter, blur(0.0), normalise])
    global2 = v2.Compose([v2.RandomResizedCrop(224, (0.32, 1.0), interpolation=v2.InterpolationMode.BICUBIC), flip_jitter, blur(0.9),
                          v2.RandomSolarize(128, 0.2), normalise])
    local = v2.Compose([v2.RandomResizedCrop(98, (0.05, 0.32), interpolation=v2.InterpolationMode.BICUBIC), flip_jitter, blur(0.5), normalise])
    return lambda image: [global1(image), global2(image)] + [local(image) for _ in range(8)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=120, help="frames written per source")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--size", type=int, default=224, help="FrameDataset frame_size")
    parser.add_argument("--seconds", type=float, default=2.0, help="timing budget per measurement")
    parser.add_argument("--batch", type=int, default=16, help="multi-crop batch")
    parser.add_argument("--device", default="cpu", help="device for the multi-crop augmentation")
    args = parser.parse_args()
    torch.set_num_threads(1)  # one DataLoader worker
    cv2.setNumThreads(1)
    order = list(range(args.frames))
    random.Random(0).shuffle(order)
    rows: list[tuple[str, float, float | None, str]] = []

    with tempfile.TemporaryDirectory() as tmp:
        paths = make_logs(Path(tmp), args.frames, args.height, args.width)
        resize = reference_resize(args.size)

        images = FrameDataset(discover_sources([paths["images"]]), frame_size=args.size)
        files = images.sources[0].files
        ours = rate(lambda i: int(images[i] is not None), order, args.seconds)
        ref = rate(lambda i: int(resize(v2.functional.pil_to_tensor(Image.open(files[i]).convert("RGB"))).numel() > 0), order, args.seconds)
        rows.append(("images (JPEG folder)", ours, ref, "PIL + torchvision Resize/CenterCrop"))

        video = FrameDataset(discover_sources([paths["video"]]), frame_size=args.size)
        from lerobot.datasets.video_utils import decode_video_frames

        def lerobot_frame(i: int) -> int:
            frames = decode_video_frames(paths["video"], [i / 30], 1e-3, "pyav", return_uint8=True)
            return int(resize(frames[0]).numel() > 0)

        ours = rate(lambda i: int(video[i] is not None), order, args.seconds)
        ref = rate(lerobot_frame, order, args.seconds)
        rows.append(("video (H.264, random)", ours, ref, "lerobot decode_video_frames (pyav) + resize"))
        strided = FrameDataset(discover_sources([paths["video"]]), frame_size=args.size, stride=2)
        ours = rate(lambda i: int(strided[i] is not None), list(range(len(strided))), args.seconds)
        ref = rate(lerobot_frame, list(range(0, args.frames, 2)), args.seconds)
        rows.append(("video (sequential, stride 2)", ours, ref, "lerobot decode_video_frames (pyav) + resize"))

        hdf5 = FrameDataset(discover_sources([paths["hdf5"]]), frame_size=args.size)
        import h5py

        handle = h5py.File(paths["hdf5"], "r")
        key = hdf5.sources[0].key
        ours = rate(lambda i: int(hdf5[i] is not None), order, args.seconds)
        ref = rate(lambda i: int(resize(torch.from_numpy(handle[key][i]).permute(2, 0, 1)).numel() > 0), order, args.seconds)
        rows.append(("hdf5 (robomimic)", ours, ref, "h5py + torchvision Resize/CenterCrop"))
        handle.close()

        try:
            from vla_dino.ssl import MultiCropAugmentation
            from vla_dino.ssl.config import CropConfig
        except ImportError:
            MultiCropAugmentation = None
        if MultiCropAugmentation is not None:
            device = torch.device(args.device)
            augment = MultiCropAugmentation(CropConfig(), patch_size=14)
            batches = [order[i : i + args.batch] for i in range(0, len(order) - args.batch + 1, args.batch)]
            if not batches:
                raise SystemExit(f"--batch {args.batch} is larger than the {len(order)} frames written; raise --frames")

            def ours_batch(b: int) -> int:
                batch = collate_frames([images[i] for i in batches[b]])
                out = augment(batch["frame"].to(device))
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                return out.batch_size

            reference = dinov2_reference_augmentation()

            def ref_batch(b: int) -> int:
                for i in batches[b]:
                    reference(v2.functional.pil_to_tensor(Image.open(files[i]).convert("RGB")))
                return len(batches[b])

            ours = rate(ours_batch, list(range(len(batches))), args.seconds)
            ref = rate(ref_batch, list(range(len(batches))), args.seconds)
            rows.append((f"decode + multi-crop (2×224²+8×98², {args.device})", ours, ref, "PIL + per-image torchvision v2 DINOv2 recipe"))
        else:
            rows.append(("decode + multi-crop", float("nan"), None, "vla_dino.ssl.MultiCropAugmentation not available"))

    print(f"machine: {platform.system()} {platform.release()}, {cpu_model()}, 1 worker thread; torch {torch.__version__}; frames {args.width}×{args.height} → {args.size}²")
    print(f"{'pipeline (per worker)':44s} {'ours f/s':>9s} {'ref f/s':>9s} {'ratio':>6s}  reference")
    for name, ours, ref, what in rows:
        ratio = f"{ours / ref:5.2f}×" if ref else "   - "
        ref_text = f"{ref:9.1f}" if ref else "        -"
        print(f"{name:44s} {ours:9.1f} {ref_text} {ratio:>6s}  {what}")


if __name__ == "__main__":
    main()
