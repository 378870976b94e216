"""Image preprocessing for DINOv2-style encoders, in torch (CPU or GPU).

Accepted inputs, single or batched:
- numpy uint8 arrays, channels last: (H, W, 3) or (N, H, W, 3);
- PIL images in mode "RGB";
- torch tensors, channels first: (3, H, W) or (N, 3, H, W), uint8 (0-255) or float (0-1);
- a list of any of the above (sizes may differ unless `resize_mode="none"`).

Resize policy (`resize_mode`), always ending on a multiple of the patch size:
- "resize": naive resize to `size` (OpenVLA's "resize-naive"; aspect ratio not kept);
- "letterbox": keep the aspect ratio, fit inside `size`, pad the rest with the mean colour
  (zero after normalisation);
- "center_crop": resize the shorter side to `size` then centre-crop (ImageNet-style eval);
- "none": keep the native resolution, centre-crop each side down to a multiple of the patch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ResizeMode = Literal["resize", "letterbox", "center_crop", "none"]


def _to_float_chw(image: Any, index: int | None = None) -> torch.Tensor:
    """One image → float tensor (3, H, W) in [0, 1]; clear errors for anything else."""
    where = "image" if index is None else f"image {index}"
    if type(image).__module__.startswith("PIL."):
        if image.mode != "RGB":
            raise ValueError(f"{where}: PIL mode {image.mode!r}; expected 'RGB' (use image.convert('RGB'))")
        image = np.asarray(image)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise TypeError(f"{where}: numpy dtype {image.dtype}; expected uint8 (H, W, 3)")
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"{where}: numpy shape {tuple(image.shape)}; expected (H, W, 3) RGB, channels last")
        return torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1).float().div_(255.0)
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"{where}: tensor shape {tuple(image.shape)}; expected (3, H, W), channels first")
        if image.dtype == torch.uint8:
            return image.float().div_(255.0)
        if image.is_floating_point():
            return image.float()
        raise TypeError(f"{where}: tensor dtype {image.dtype}; expected uint8 or floating point in [0, 1]")
    raise TypeError(f"{where}: unsupported type {type(image).__name__}; expected numpy uint8 HWC, PIL RGB or tensor CHW")


def _as_image_list(images: Any) -> list[torch.Tensor] | torch.Tensor:
    """Batched arrays/tensors stay one tensor (N, 3, H, W); lists become a list of (3, H, W)."""
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("empty list of images")
        return [_to_float_chw(im, i) for i, im in enumerate(images)]
    if isinstance(images, np.ndarray) and images.ndim == 4:
        if images.dtype != np.uint8:
            raise TypeError(f"numpy dtype {images.dtype}; expected uint8 (N, H, W, 3)")
        if images.shape[-1] != 3:
            raise ValueError(f"numpy shape {tuple(images.shape)}; expected (N, H, W, 3) RGB, channels last")
        return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        if images.shape[1] != 3:
            raise ValueError(f"tensor shape {tuple(images.shape)}; expected (N, 3, H, W), channels first")
        if images.dtype == torch.uint8:
            return images.float().div_(255.0)
        if not images.is_floating_point():
            raise TypeError(f"tensor dtype {images.dtype}; expected uint8 or floating point in [0, 1]")
        return images.float()
    return [_to_float_chw(images)]


@dataclass
class ImagePreprocessor:
    """Turns images into normalised pixel values (N, 3, H, W) for a ViT with `patch_size`."""

    size: int | tuple[int, int] = 224
    resize_mode: ResizeMode = "resize"
    patch_size: int = 14
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    device: str | torch.device | None = field(default=None, compare=False)
    # mean/std tensors per (device, dtype), made once: a per-call host→device copy would sync
    # and break CUDA-graph capture of the runtime
    _stats_cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.resize_mode not in ("resize", "letterbox", "center_crop", "none"):
            raise ValueError(f"resize_mode={self.resize_mode!r}; expected resize, letterbox, center_crop or none")
        height, width = self.target_size
        if self.resize_mode != "none" and (height % self.patch_size or width % self.patch_size):
            raise ValueError(f"size {self.size} must be a multiple of the patch size {self.patch_size}")

    @property
    def target_size(self) -> tuple[int, int]:
        return (self.size, self.size) if isinstance(self.size, int) else tuple(self.size)  # type: ignore[return-value]

    def __call__(self, images: Any) -> torch.Tensor:
        batch = _as_image_list(images)
        if isinstance(batch, torch.Tensor):
            pixels = self._resize(batch.to(self.device) if self.device else batch)
        else:
            resized = [self._resize((im.to(self.device) if self.device else im)[None]) for im in batch]
            shapes = {tuple(r.shape[-2:]) for r in resized}
            if len(shapes) > 1:
                raise ValueError(f"images have different sizes {sorted(shapes)} with resize_mode='none'; pick a size")
            pixels = torch.cat(resized)
        mean, std = self._stats(pixels.device, pixels.dtype)
        return (pixels - mean) / std

    def _stats(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std as (1, 3, 1, 1) tensors on `device`."""
        key = (str(device), dtype, self.mean, self.std)
        if key not in self._stats_cache:
            self._stats_cache[key] = tuple(
                torch.tensor(values, device=device, dtype=dtype).view(1, 3, 1, 1) for values in (self.mean, self.std)
            )
        return self._stats_cache[key]

    def _resize(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) float in [0, 1] → resized per the policy, still in [0, 1]."""
        height, width = pixels.shape[-2:]
        patch = self.patch_size
        if height < patch or width < patch:
            raise ValueError(f"image of {height}×{width} px is smaller than one {patch}×{patch} patch")
        target_h, target_w = self.target_size
        if self.resize_mode == "none":
            crop_h, crop_w = height // patch * patch, width // patch * patch
            top, left = (height - crop_h) // 2, (width - crop_w) // 2
            return pixels[..., top : top + crop_h, left : left + crop_w]
        if self.resize_mode == "resize":
            return _interpolate(pixels, (target_h, target_w))
        if self.resize_mode == "center_crop":
            scale = max(target_h / height, target_w / width)
            new_h, new_w = max(target_h, round(height * scale)), max(target_w, round(width * scale))
            pixels = _interpolate(pixels, (new_h, new_w))
            top, left = (new_h - target_h) // 2, (new_w - target_w) // 2
            return pixels[..., top : top + target_h, left : left + target_w]
        # letterbox: fit inside, pad with the mean colour so padding normalises to zero
        scale = min(target_h / height, target_w / width)
        new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
        pixels = _interpolate(pixels, (new_h, new_w))
        canvas = self._stats(pixels.device, pixels.dtype)[0]
        canvas = canvas.expand(pixels.shape[0], 3, target_h, target_w).clone()
        top, left = (target_h - new_h) // 2, (target_w - new_w) // 2
        canvas[..., top : top + new_h, left : left + new_w] = pixels
        return canvas


def _interpolate(pixels: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(pixels.shape[-2:]) == tuple(size):
        return pixels
    # bicubic with antialias matches PIL's resize closely when shrinking
    return F.interpolate(pixels, size=tuple(size), mode="bicubic", antialias=True, align_corners=False).clamp_(0, 1)
