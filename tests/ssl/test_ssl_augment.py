"""Multi-crop augmentation: layout, temporal views, switches, and photometric ops against
torchvision's reference implementations."""

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from vla_dino.encoder import IMAGENET_MEAN, IMAGENET_STD
from vla_dino.ssl import photometric
from vla_dino.ssl.augment import MultiCropAugmentation, random_resized_boxes
from vla_dino.ssl.config import CropConfig

_PLAIN = dict(jitter_strength=0.0, grayscale_prob=0.0, blur_prob_global2=0.0, blur_prob_local=0.0, solarize_prob_global2=0.0)


def _solid(colours: torch.Tensor, size: int = 40) -> torch.Tensor:
    """One flat-coloured uint8 frame per row of `colours` (B, 3)."""
    return colours.to(torch.uint8).view(-1, 3, 1, 1).expand(-1, 3, size, size).contiguous()


def _denormalise(x: torch.Tensor) -> torch.Tensor:
    return x * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)


def test_layout_is_crop_major_with_masks():
    config = CropConfig(global_size=28, local_size=14, num_local=3, **_PLAIN)
    colours = torch.tensor([[255, 0, 0], [0, 255, 0]])
    batch = MultiCropAugmentation(config, patch_size=7)(_solid(colours))
    assert batch.global_crops.shape == (4, 3, 28, 28) and batch.local_crops.shape == (6, 3, 14, 14)
    assert batch.masks.shape == (4, 16) and batch.masks.dtype == torch.bool
    assert batch.batch_size == 2 and batch.num_local == 3
    expected = colours.float() / 255
    for crops in (batch.global_crops, batch.local_crops):  # [all B of crop 0, all B of crop 1, …]
        means = _denormalise(crops).mean(dim=(2, 3))
        torch.testing.assert_close(means, expected.repeat(crops.shape[0] // 2, 1), atol=1e-5, rtol=0)


def test_temporal_neighbours_feed_the_second_global_and_half_the_local_crops():
    config = CropConfig(global_size=28, local_size=14, num_local=4, **_PLAIN)
    frames = _solid(torch.tensor([[200, 0, 0]]))
    neighbours = _solid(torch.tensor([[0, 0, 200]]))
    batch = MultiCropAugmentation(config, patch_size=7)(frames, neighbours)
    red = _denormalise(batch.global_crops)[:, 0].mean(dim=(1, 2))
    assert red[0] > 0.7 and red[1] < 0.05  # global 1 from the frame, global 2 from the neighbour
    local_red = _denormalise(batch.local_crops)[:, 0].mean(dim=(1, 2))
    assert (local_red < 0.05).sum() == 2 and (local_red > 0.7).sum() == 2


def test_hflip_switch_and_full_box_identity():
    ramp = torch.arange(28, dtype=torch.uint8).mul(9).view(1, 1, 1, 28).expand(4, 3, 28, 28).contiguous()
    config = CropConfig(global_size=28, local_size=14, num_local=0, global_scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=False, **_PLAIN)
    batch = MultiCropAugmentation(config, patch_size=7)(ramp)
    # Full-frame box at the native size: the crop is the frame itself.
    torch.testing.assert_close(_denormalise(batch.global_crops) * 255, ramp.float().repeat(2, 1, 1, 1), atol=1e-3, rtol=0)
    config.hflip = True
    torch.manual_seed(0)
    flipped = MultiCropAugmentation(config, patch_size=7)(ramp.repeat(8, 1, 1, 1)).global_crops
    increasing = (flipped[:, 0, 0, -1] > flipped[:, 0, 0, 0])
    assert 0 < increasing.sum() < increasing.numel()  # some crops flipped, some not


def test_random_resized_boxes_respect_scale_and_ratio():
    boxes = random_resized_boxes(500, 60, 80, (0.1, 0.5), (0.75, 4 / 3), torch.device("cpu"))
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 80).all() and (boxes[:, 3] <= 60).all()
    area = w * h / (60 * 80)
    assert area.min() > 0.08 and area.max() < 0.53  # within scale up to rounding of the sides
    assert ((w / h) > 0.65).all() and ((w / h) < 1.5).all()


def test_photometric_ops_match_torchvision():
    images = torch.rand(3, 3, 16, 16)
    factors = torch.tensor([0.6, 1.0, 1.4])
    for ours, theirs in (
        (photometric.adjust_brightness, TF.adjust_brightness),
        (photometric.adjust_contrast, TF.adjust_contrast),
        (photometric.adjust_saturation, TF.adjust_saturation),
    ):
        expected = torch.stack([theirs(images[i], float(factors[i])) for i in range(3)])
        torch.testing.assert_close(ours(images, factors), expected, atol=1e-5, rtol=0)
    shifts = torch.tensor([-0.1, 0.0, 0.07])
    expected = torch.stack([TF.adjust_hue(images[i], float(shifts[i])) for i in range(3)])
    torch.testing.assert_close(photometric.adjust_hue(images, shifts), expected, atol=1e-5, rtol=0)
    sigma = torch.tensor([0.5, 1.0, 2.0])
    expected = torch.stack([TF.gaussian_blur(images[i], [9, 9], [float(sigma[i])] * 2) for i in range(3)])
    torch.testing.assert_close(photometric.gaussian_blur(images, sigma, 9), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(photometric.grayscale(images), TF.rgb_to_grayscale(images), atol=1e-6, rtol=0)
    solarized = photometric.random_solarize(images, prob=1.0)
    torch.testing.assert_close(solarized, torch.where(images >= 128 / 255, 1 - images, images))


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="crops.local_size=96 is not a multiple of the patch size 14"):
        MultiCropAugmentation(CropConfig(local_size=96), patch_size=14)
    augment = MultiCropAugmentation(CropConfig(global_size=28, local_size=14), patch_size=7)
    with pytest.raises(ValueError, match="expected uint8"):
        augment(torch.rand(2, 3, 32, 32))
