"""iBOT block masks with DINOv2's batch distribution (BEiT-style rectangular blocks).

Of the n global crops, ⌊n · mask_probability⌋ are masked; crop i of those gets a target of
⌊P · U(r_i, r_{i+1})⌋ masked patches with r = linspace(ratio_min, ratio_max, m + 1), so the
ratios are spread evenly over the range; the rest get empty masks; the order is shuffled.
Each mask is filled with rectangles of ≥ `min_patches` patches and log-uniform aspect ratio
until it reaches its target. Masks are small (grid ≤ 37×37), so they are built on the CPU
with numpy and moved to the crops' device.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from vla_dino.ssl.config import MaskConfig


class BlockMaskGenerator:
    """One (h, w) boolean mask with about `num_masked` patches set, in rectangles."""

    def __init__(self, grid: tuple[int, int], config: MaskConfig) -> None:
        self.height, self.width = grid
        self.min_patches = config.min_patches
        self.max_block = max(1, int(config.max_block_fraction * self.height * self.width))
        self.log_aspect = (math.log(config.aspect[0]), math.log(config.aspect[1]))

    def _add_block(self, mask: np.ndarray, budget: int, rng: np.random.Generator) -> int:
        """Try up to 10 rectangles; set the first that adds 1..budget new patches."""
        for _ in range(10):
            # Between min_patches and budget in either order (as Python's random.uniform).
            area = self.min_patches + (budget - self.min_patches) * rng.random()
            aspect = math.exp(rng.uniform(*self.log_aspect))
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if 0 < h < self.height and 0 < w < self.width:
                top = int(rng.integers(0, self.height - h + 1))
                left = int(rng.integers(0, self.width - w + 1))
                block = mask[top : top + h, left : left + w]
                added = int(block.size - block.sum())
                if 0 < added <= budget:
                    block[...] = True
                    return added
        return 0

    def __call__(self, num_masked: int, rng: np.random.Generator) -> np.ndarray:
        mask = np.zeros((self.height, self.width), dtype=bool)
        count = 0
        while count < num_masked:
            added = self._add_block(mask, min(num_masked - count, self.max_block), rng)
            if added == 0:
                break
            count += added
        return mask


def sample_masks(
    num_images: int, grid: tuple[int, int], config: MaskConfig, rng: np.random.Generator | None = None
) -> torch.Tensor:
    """(num_images, h·w) bool masks with DINOv2's distribution (see the module docstring)."""
    if rng is None:  # follow torch's seed so torch.manual_seed makes runs reproducible
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
    generator = BlockMaskGenerator(grid, config)
    num_patches = grid[0] * grid[1]
    num_masked_images = int(num_images * config.mask_probability)
    bounds = np.linspace(*config.ratio_min_max, num_masked_images + 1)
    masks = [generator(int(num_patches * rng.uniform(bounds[i], bounds[i + 1])), rng) for i in range(num_masked_images)]
    masks += [np.zeros(grid, dtype=bool)] * (num_images - num_masked_images)
    order = rng.permutation(num_images)
    return torch.from_numpy(np.stack([masks[i] for i in order]).reshape(num_images, num_patches))
