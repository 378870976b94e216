"""Block masks follow DINOv2's batch distribution."""

import numpy as np
import torch

from vla_dino.ssl.config import MaskConfig
from vla_dino.ssl.masking import BlockMaskGenerator, sample_masks


def test_mask_statistics_over_a_batch():
    config = MaskConfig()
    grid, n = (16, 16), 64
    masks = sample_masks(n, grid, config, np.random.default_rng(0))
    assert masks.shape == (n, 256) and masks.dtype == torch.bool
    counts = masks.sum(dim=1)
    masked = counts[counts > 0]
    assert len(masked) == n // 2  # exactly half of the global crops are masked
    ratios = masked.float() / 256
    # Targets are drawn from linspace(0.1, 0.5) bins, one per masked crop: never above 0.5,
    # spread over the range (both ends populated), mean near the middle.
    assert ratios.max() <= 0.5
    assert ratios.min() < 0.15 and ratios.max() > 0.4
    assert 0.22 < ratios.mean() < 0.32  # blocks may stop a little short of their target
    # Sorted ratios follow the evenly spread targets closely.
    targets = torch.linspace(0.1, 0.5, 33)[:-1] + 0.4 / 64
    assert (ratios.sort().values - targets).abs().mean() < 0.05


def test_masks_are_blocks_of_min_size_and_aspect():
    config = MaskConfig()
    generator = BlockMaskGenerator((14, 14), config)
    rng = np.random.default_rng(1)
    for _ in range(50):
        mask = np.zeros((14, 14), dtype=bool)
        added = generator._add_block(mask, 12, rng)  # one block on an empty grid
        rows, cols = np.nonzero(mask)
        h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert added == mask.sum() == h * w  # a filled rectangle
        assert 3 <= added <= 12  # area ~ U(min_patches=4, 12), rounded to a rectangle
        assert 0.3 / 2 <= h / w <= 2 / 0.3  # aspect log-uniform in [0.3, 3.3] up to rounding
    # A whole mask reaches its target without exceeding it.
    assert generator(40, rng).sum() <= 40


def test_masks_follow_torch_seed():
    torch.manual_seed(3)
    a = sample_masks(8, (8, 8), MaskConfig())
    torch.manual_seed(3)
    b = sample_masks(8, (8, 8), MaskConfig())
    assert torch.equal(a, b)


def test_no_masks_when_probability_zero():
    assert not sample_masks(10, (8, 8), MaskConfig(mask_probability=0.0)).any()
