"""Decoding a batch's deferred JPEG frames in the main process, on the GPU where there is one.

With `FrameDataset(defer_jpeg=True)` the DataLoader workers only read plain JPEG files (`read_jpeg_bytes`), and the
batch carries their bytes where the decoded frames would be. `JpegBatchDecoder(dataset, device)` decodes all of them
in one `torchvision.io.decode_jpeg(list, device=device)` call (on CUDA: nvJPEG, batched, on the hardware JPEG decoder
of A100/H100-class GPUs), then crops and resizes them on that device with `square_resize_tensor`, the workers'
`square_resize` in torch ops. Rows that arrive decoded (PNG, video, HDF5, JPEGs `read_jpeg_bytes` turned down) move
to the device as they are. The result is the batch `collate_frames` gives without deferral, its frames on `device`.
torchvision returns once nvJPEG's own stream has finished the batch (the host waits for that, not for the training
stream), and makes the current stream wait for it: run inside `DevicePrefetcher`'s iterator, the resize and stack
land on its side stream and overlap the step.

Pixels: torchvision's libjpeg-turbo decodes to the same pixels as Pillow, and the resize matches OpenCV's within 1
grey level. What differs: the workers decode a JPEG at least twice the target size at reduced DCT scale
(`Image.draft`); this decodes at full size and box-averages. Measured on 640×480 and 1280×720 camera frames to
64–256²: mean |Δ| 0.1–1.0 grey levels, up to 20–70 at sharp edges; within 1 where no draft applies.

Failures: if decoding the batch raises (a file that passed the header check is corrupt inside), its JPEG rows are
decoded again one by one by the workers' path (`FrameDataset.decode_frame`: Pillow, OpenCV), and a row that fails
there too is dropped and recorded in `batch["skipped"]` / `num_skipped` as a worker records it, so
`FrameDataset.merge_skipped` counts it.

On CPU, `JpegBatchDecoder(dataset, "cpu")` is the same stage with libjpeg-turbo in the main process, one image at a
time: correct, and slower than decoding in parallel workers, which is what `defer_jpeg=False` does.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from torchvision.io import ImageReadMode, decode_jpeg

from vla_dino.data.base import square_resize_tensor
from vla_dino.data.dataset import FrameDataset

_FRAME_KEYS = ("frame", "neighbor")  # decoded in this order: a row's frame error is the one recorded, as in __getitem__
_ROW_TENSORS = ("index", "frame_index", "neighbor_frame_index")


class JpegBatchDecoder:
    """batch of `FrameDataset(defer_jpeg=True)` + `collate_frames` → the same batch decoded, frames on `device`."""

    def __init__(self, dataset: FrameDataset, device: torch.device | str = "cpu") -> None:
        self.dataset, self.device = dataset, torch.device(device)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        keys = [key for key in _FRAME_KEYS if key in batch]
        if not any(isinstance(batch[key], list) for key in keys):
            return batch  # nothing deferred: collate_frames stacked it
        failed: dict[int, tuple[str, str, str]] = {}  # row → skip record
        rows = {key: self._decode(batch, key, failed) for key in keys}
        kept = [row for row in range(len(batch["source"])) if row not in failed]
        out = dict(batch)
        if kept:
            for key in keys:
                out[key] = torch.stack([rows[key][row].to(self.device) for row in kept])
        else:  # as collate_frames leaves an all-skipped batch
            out["frame"] = torch.empty(0, 3, 0, 0, dtype=torch.uint8, device=self.device)
            for key in ("neighbor", "neighbor_frame_index"):
                out.pop(key, None)
        if failed:
            for key in _ROW_TENSORS:
                if key in out:
                    out[key] = batch[key][kept]
            out["source"] = [batch["source"][row] for row in kept]
            out["num_skipped"] = batch["num_skipped"] + len(failed)
            out["skipped"] = batch["skipped"] + list(failed.values())
        return out

    def _decode(self, batch: dict[str, Any], key: str, failed: dict[int, tuple[str, str, str]]) -> list[torch.Tensor]:
        """The rows of batch[key] as (3, S, S) frames; rows that cannot be decoded go to `failed` (and stay bytes)."""
        frames = list(batch[key])  # a stacked tensor (nothing deferred for this key) unbinds into its rows
        encoded = [row for row, frame in enumerate(frames) if frame.ndim == 1]
        if not encoded:
            return frames
        try:
            images = decode_jpeg([frames[row] for row in encoded], mode=ImageReadMode.RGB, device=self.device)
            for row, frame in zip(encoded, self._square_resize(images)):
                frames[row] = frame
        except RuntimeError:  # one of them is corrupt: the workers' decoder takes them one by one and names why
            for row in encoded:
                source, frame_index = self.dataset.locate(int(batch["index"][row]))
                if key == "neighbor":
                    frame_index = int(batch["neighbor_frame_index"][row])
                try:
                    frames[row] = self.dataset.decode_frame(source, frame_index)
                except Exception as error:  # skipped, as FrameDataset.__getitem__ skips
                    failed.setdefault(row, self.dataset.skip_record(source, frame_index, error))
        return frames

    def _square_resize(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        """Images of one shape are resized together (a camera's frames share theirs)."""
        by_shape: dict[torch.Size, list[int]] = defaultdict(list)
        for i, image in enumerate(images):
            by_shape[image.shape].append(i)
        resized: list[torch.Tensor] = list(images)
        for indices in by_shape.values():
            frames = square_resize_tensor(torch.stack([images[i] for i in indices]), self.dataset.frame_size)
            for i, frame in zip(indices, frames):
                resized[i] = frame
        return resized
