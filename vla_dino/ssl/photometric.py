"""Batched photometric augmentations on float images in [0, 1], shape (N, 3, H, W), with a
random draw per image: DINOv2's ColorJitter / grayscale / Gaussian blur / solarize recipe
as pure torch ops (CPU or GPU). Formulas follow torchvision's tensor functional ops."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale


def _rand(n: int, device: torch.device, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    return torch.rand(n, device=device) * (high - low) + low


@functools.cache
def channel_constant(values: tuple[float, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(1, C, 1, 1) constant, made once per device: building it from Python numbers on every call would be a
    blocking host→device copy on a GPU."""
    return torch.tensor(values, dtype=dtype).view(1, -1, 1, 1).to(device)


def _per_image(values: torch.Tensor) -> torch.Tensor:
    return values.view(-1, 1, 1, 1)


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma, (N, 1, H, W)."""
    weights = channel_constant(_GRAY_WEIGHTS, images.device, images.dtype)
    return (images * weights).sum(dim=1, keepdim=True)


def _blend(images: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    factor = _per_image(factor)
    return (factor * images + (1.0 - factor) * other).clamp_(0.0, 1.0)


def _rgb_to_hsv(images: torch.Tensor) -> torch.Tensor:
    r, g, b = images.unbind(dim=1)
    maxc, _ = images.max(dim=1)
    minc, _ = images.min(dim=1)
    flat = maxc == minc
    chroma = maxc - minc
    ones = torch.ones_like(maxc)
    saturation = chroma / torch.where(flat, ones, maxc)
    divisor = torch.where(flat, ones, chroma)
    rc, gc, bc = (maxc - r) / divisor, (maxc - g) / divisor, (maxc - b) / divisor
    hue_r = (maxc == r) * (bc - gc)
    hue_g = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hue_b = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    hue = torch.fmod((hue_r + hue_g + hue_b) / 6.0 + 1.0, 1.0)
    return torch.stack((hue, saturation, maxc), dim=1)


def _hsv_to_rgb(images: torch.Tensor) -> torch.Tensor:
    h, s, v = images.unbind(dim=1)
    sector = torch.floor(h * 6.0)
    f = h * 6.0 - sector
    sector = sector.to(torch.int64) % 6
    p = (v * (1.0 - s)).clamp(0.0, 1.0)
    q = (v * (1.0 - s * f)).clamp(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0)
    onehot = (sector.unsqueeze(1) == torch.arange(6, device=h.device).view(1, 6, 1, 1)).to(images.dtype)
    red = torch.stack((v, q, p, p, t, v), dim=1)
    green = torch.stack((t, v, v, q, p, p), dim=1)
    blue = torch.stack((p, p, t, v, v, q), dim=1)
    return torch.stack([(onehot * channel).sum(dim=1) for channel in (red, green, blue)], dim=1)


def adjust_brightness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(images, torch.zeros_like(images[:, :1]), factor)


def adjust_contrast(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    mean = grayscale(images).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(images, mean, factor)


def adjust_saturation(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(images, grayscale(images), factor)


def adjust_hue(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    hsv = _rgb_to_hsv(images)
    hue = torch.remainder(hsv[:, 0] + shift.view(-1, 1, 1), 1.0)
    return _hsv_to_rgb(torch.stack((hue, hsv[:, 1], hsv[:, 2]), dim=1))


def color_jitter(images: torch.Tensor, strength: float, prob: float) -> torch.Tensor:
    """RandomApply(ColorJitter(0.4s, 0.4s, 0.2s, 0.1s), p): per-image factors
    brightness/contrast ~ U(1 ± 0.4s), saturation ~ U(1 ± 0.2s), hue ~ U(± 0.1s); images
    not drawn get identity factors. The op order is shuffled once per call (torchvision
    shuffles per image)."""
    if strength <= 0 or prob <= 0:
        return images
    n, device = images.shape[0], images.device
    apply = (_rand(n, device) < prob).float()
    bright, contrast, sat = 0.4 * strength, 0.4 * strength, 0.2 * strength
    hue = min(0.1 * strength, 0.5)
    factors = {
        "brightness": 1.0 + apply * _rand(n, device, max(0.0, 1 - bright) - 1, bright),
        "contrast": 1.0 + apply * _rand(n, device, max(0.0, 1 - contrast) - 1, contrast),
        "saturation": 1.0 + apply * _rand(n, device, max(0.0, 1 - sat) - 1, sat),
        "hue": apply * _rand(n, device, -hue, hue),
    }
    ops = {
        "brightness": adjust_brightness,
        "contrast": adjust_contrast,
        "saturation": adjust_saturation,
        "hue": adjust_hue,
    }
    for index in torch.randperm(4).tolist():
        name = list(ops)[index]
        images = ops[name](images, factors[name])
    return images


def random_grayscale(images: torch.Tensor, prob: float) -> torch.Tensor:
    if prob <= 0:
        return images
    chosen = _per_image(_rand(images.shape[0], images.device) < prob)
    return torch.where(chosen, grayscale(images).expand_as(images), images)


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Separable Gaussian blur with a per-image σ (reflect padding, like torchvision)."""
    n, c, h, w = images.shape
    half = kernel_size // 2
    if half >= min(h, w):
        raise ValueError(f"blur kernel {kernel_size} too large for {h}×{w} crops; lower crops.blur_kernel")
    x = torch.arange(kernel_size, device=images.device, dtype=images.dtype) - half
    kernel = torch.exp(-(x.view(1, -1) ** 2) / (2.0 * sigma.view(-1, 1).to(images.dtype) ** 2))
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (n·c, k)
    flat = images.reshape(1, n * c, h, w)
    flat = F.conv2d(F.pad(flat, (half, half, 0, 0), mode="reflect"), kernel.view(n * c, 1, 1, kernel_size), groups=n * c)
    flat = F.conv2d(F.pad(flat, (0, 0, half, half), mode="reflect"), kernel.view(n * c, 1, kernel_size, 1), groups=n * c)
    return flat.view(n, c, h, w)


def random_blur(images: torch.Tensor, prob: float, sigma_range: tuple[float, float], kernel_size: int) -> torch.Tensor:
    """Blur the images drawn with probability `prob`, σ ~ U(sigma_range) each."""
    if prob <= 0:
        return images
    # drawn on the host: `nonzero` and the emptiness check of a GPU tensor would wait for the GPU
    chosen = (_rand(images.shape[0], torch.device("cpu")) < prob).nonzero().flatten()
    if chosen.numel() == 0:
        return images
    sigma = _rand(chosen.numel(), torch.device("cpu"), *sigma_range).to(images.device, non_blocking=True)
    chosen = chosen.to(images.device, non_blocking=True)
    images = images.clone()
    images[chosen] = gaussian_blur(images[chosen], sigma, kernel_size)
    return images


def random_solarize(images: torch.Tensor, prob: float, threshold: float = 128 / 255) -> torch.Tensor:
    """Invert pixels ≥ threshold (torchvision's RandomSolarize(128) on 8-bit images)."""
    if prob <= 0:
        return images
    chosen = _per_image(_rand(images.shape[0], images.device) < prob)
    return torch.where(chosen & (images >= threshold), 1.0 - images, images)
