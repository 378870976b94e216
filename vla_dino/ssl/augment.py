"""Multi-crop augmentation as batched tensor ops (CPU or GPU): 2 global + L local crops
per frame, DINOv2's photometric recipe, iBOT masks for the global crops.

Crops are RandomResizedCrop boxes (area fraction ~ U(scale), aspect log-uniform in `ratio`,
10 tries then a centre crop, as torchvision) resampled with `torchvision.ops.roi_align`
(`sampling_ratio=-1` averages ⌈box/out⌉² bilinear samples per output pixel, i.e. an
antialiased downscale), so one call crops and resizes the whole batch.

Per crop set: flip (p=0.5, switchable) → ColorJitter (p=0.8, strength-scaled) → grayscale
(p=0.2) → blur (p = 0.0 / 0.9 / 0.5 for global 1 / global 2 / local) → solarize (global 2,
p=0.2) → ImageNet mean/std.

Temporal views: with `neighbors` (frames from a nearby time step of the same episode) the
second global crop and `temporal_local_fraction` of the local crops are cut from the
neighbour frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torchvision.ops import roi_align

from vla_dino.encoder.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from vla_dino.ssl import photometric
from vla_dino.ssl.config import CropConfig, MaskConfig, SSLConfig
from vla_dino.ssl.masking import sample_masks


@dataclass
class MultiCropBatch:
    """Crop-major crops: global_crops = [all B of crop 0; all B of crop 1]."""

    global_crops: torch.Tensor  # (2B, 3, G, G) normalised
    local_crops: torch.Tensor  # (L·B, 3, l, l) normalised; L may be 0
    masks: torch.Tensor  # (2B, (G/p)²) bool, for the student's global crops
    # Flat indices of the masked patches (`masks.flatten().nonzero()`, row-major), made where the masks are made:
    # on the host, because `nonzero` of a GPU tensor waits for the GPU. Computed from `masks` when not given.
    mask_index: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.mask_index is None:
            self.mask_index = self.masks.flatten().nonzero().squeeze(1)

    @property
    def batch_size(self) -> int:
        return self.global_crops.shape[0] // 2

    @property
    def num_local(self) -> int:
        return self.local_crops.shape[0] // self.batch_size

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "MultiCropBatch":
        return MultiCropBatch(*(t.to(device, non_blocking=non_blocking) for t in self._tensors()))

    def pin_memory(self) -> "MultiCropBatch":
        return MultiCropBatch(*(t.pin_memory() for t in self._tensors()))

    def _tensors(self) -> tuple[torch.Tensor, ...]:
        return self.global_crops, self.local_crops, self.masks, self.mask_index


def random_resized_boxes(
    num: int, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float], device: torch.device, tries: int = 10
) -> torch.Tensor:
    """(num, 4) boxes x1, y1, x2, y2 in pixels, drawn like torchvision's RandomResizedCrop."""
    area = height * width
    target = area * (torch.rand(num, tries, device=device) * (scale[1] - scale[0]) + scale[0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(torch.rand(num, tries, device=device) * (log_hi - log_lo) + log_lo)
    w = torch.sqrt(target * aspect).round()
    h = torch.sqrt(target / aspect).round()
    valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.where(valid.any(dim=1), valid.float().argmax(dim=1), torch.full((num,), -1, device=device))
    # Fallback (no valid try): the whole frame clipped to the ratio range, centred.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        fw, fh = round(height * ratio[1]), height
    else:
        fw, fh = width, height
    pick = first.clamp(min=0).unsqueeze(1)
    w = torch.where(first >= 0, w.gather(1, pick).squeeze(1), torch.full_like(first, fw, dtype=w.dtype))
    h = torch.where(first >= 0, h.gather(1, pick).squeeze(1), torch.full_like(first, fh, dtype=h.dtype))
    top = torch.floor(torch.rand(num, device=device) * (height - h + 1))
    left = torch.floor(torch.rand(num, device=device) * (width - w + 1))
    centred = first < 0
    top = torch.where(centred, ((height - h) / 2).floor(), top)
    left = torch.where(centred, ((width - w) / 2).floor(), left)
    return torch.stack((left, top, left + w, top + h), dim=1)


class MultiCropAugmentation:
    """uint8 frames (B, 3, H, W) on any device → `MultiCropBatch` on the same device."""

    def __init__(self, crops: CropConfig, patch_size: int, masking: MaskConfig | None = None) -> None:
        for name in ("global_size", "local_size"):
            size = getattr(crops, name)
            if size % patch_size:
                raise ValueError(f"crops.{name}={size} is not a multiple of the patch size {patch_size}")
        self.config = crops
        self.masking = masking if masking is not None else MaskConfig()
        self.patch_size = patch_size
        self.grid = (crops.global_size // patch_size, crops.global_size // patch_size)

    @classmethod
    def from_config(cls, config: SSLConfig, patch_size: int) -> "MultiCropAugmentation":
        return cls(config.crops, patch_size, config.masking)

    def _crop(self, sources: torch.Tensor, index: torch.Tensor, size: int, scale: tuple[float, float]) -> torch.Tensor:
        """Crop-and-resize one box per entry of `index` (rows of `sources`), then maybe flip."""
        height, width = sources.shape[-2:]
        boxes = random_resized_boxes(index.numel(), height, width, scale, self.config.ratio, sources.device)
        rois = torch.cat((index.to(boxes.dtype).unsqueeze(1), boxes), dim=1)
        crops = roi_align(sources, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
        if self.config.hflip:
            flip = (torch.rand(crops.shape[0], device=crops.device) < 0.5).view(-1, 1, 1, 1)
            crops = torch.where(flip, crops.flip(-1), crops)
        return crops

    def _photometric(self, crops: torch.Tensor, blur_prob: float, solarize_prob: float) -> torch.Tensor:
        c = self.config
        crops = photometric.color_jitter(crops, c.jitter_strength, c.jitter_prob)
        crops = photometric.random_grayscale(crops, c.grayscale_prob)
        crops = photometric.random_blur(crops, blur_prob, c.blur_sigma, c.blur_kernel)
        crops = photometric.random_solarize(crops, solarize_prob)
        return crops

    @staticmethod
    def _normalise(crops: torch.Tensor) -> torch.Tensor:
        mean = photometric.channel_constant(IMAGENET_MEAN, crops.device, crops.dtype)
        std = photometric.channel_constant(IMAGENET_STD, crops.device, crops.dtype)
        return (crops - mean) / std

    @staticmethod
    def _check(frames: torch.Tensor, name: str) -> None:
        if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[1] != 3:
            raise ValueError(f"{name}: {frames.dtype} {tuple(frames.shape)}; expected uint8 (B, 3, H, W)")

    @torch.no_grad()
    def __call__(self, frames: torch.Tensor, neighbors: torch.Tensor | None = None) -> MultiCropBatch:
        self._check(frames, "frames")
        batch = frames.shape[0]
        if batch == 0:
            raise ValueError("frames: empty batch")
        if neighbors is not None:
            self._check(neighbors, "neighbors")
            if neighbors.shape != frames.shape or neighbors.device != frames.device:
                raise ValueError(f"neighbors {tuple(neighbors.shape)} on {neighbors.device}; expected {tuple(frames.shape)} on {frames.device}")
            sources = torch.cat((frames, neighbors)).float().div_(255.0)
        else:
            sources = frames.float().div_(255.0)
        c = self.config
        device = frames.device
        own = torch.arange(batch, device=device)
        other = own + batch if neighbors is not None else own
        global1 = self._photometric(self._crop(sources, own, c.global_size, c.global_scale), c.blur_prob_global1, 0.0)
        global2 = self._photometric(
            self._crop(sources, other, c.global_size, c.global_scale), c.blur_prob_global2, c.solarize_prob_global2
        )
        global_crops = self._normalise(torch.cat((global1, global2)))
        if c.num_local > 0:
            temporal = round(c.temporal_local_fraction * c.num_local) if neighbors is not None else 0
            index = torch.cat([other if i < temporal else own for i in range(c.num_local)])
            local = self._crop(sources, index, c.local_size, c.local_scale)
            local_crops = self._normalise(self._photometric(local, c.blur_prob_local, 0.0))
        else:
            local_crops = global_crops.new_zeros((0, 3, c.local_size, c.local_size))
        # Masks are drawn on the host (numpy); the copies do not wait for the device (pageable memory is staged).
        masks = sample_masks(2 * batch, self.grid, self.masking)
        mask_index = masks.flatten().nonzero().squeeze(1)
        return MultiCropBatch(global_crops, local_crops, masks.to(device, non_blocking=True),
                              mask_index.to(device, non_blocking=True))
