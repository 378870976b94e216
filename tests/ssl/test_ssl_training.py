"""A short DINOv2 run on synthetic images with a hidden attribute: no collapse, and a linear
probe on the frozen teacher features beats the same probe on the random-init encoder."""

import math

import pytest
import torch

from vla_dino.encoder import IMAGENET_MEAN, IMAGENET_STD, DinoEncoder
from vla_dino.ssl import MultiCropAugmentation, SSLConfig, SSLModel, SSLTrainer

NUM_CLASSES = 4


def textures(n: int, generator: torch.Generator, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden class = pattern type (horizontal / vertical stripes, checkerboard, diagonal
    stripes), with random colours, period, phase and pixel noise. uint8 (n, 3, size, size)."""
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=generator)
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    period = torch.rand(n, 1, 1, generator=generator) * 4 + 5
    phase = torch.rand(n, 1, 1, generator=generator) * 2 * math.pi
    horizontal = torch.sin(2 * math.pi * yy / period + phase)
    vertical = torch.sin(2 * math.pi * xx / period + phase)
    diagonal = torch.sin(2 * math.pi * (xx + yy) / (period * math.sqrt(2)) + phase)
    patterns = torch.stack([horizontal, vertical, horizontal * vertical, diagonal], 1)[torch.arange(n), labels] > 0
    foreground = torch.rand(n, 3, 1, 1, generator=generator)
    background = torch.rand(n, 3, 1, 1, generator=generator)
    images = torch.where(patterns[:, None], foreground, background) + 0.1 * torch.randn(n, 3, size, size, generator=generator)
    return (images.clamp(0, 1) * 255).to(torch.uint8), labels


@torch.no_grad()
def frozen_features(encoder: DinoEncoder, frames: torch.Tensor) -> torch.Tensor:
    pixels = torch.nn.functional.interpolate(frames.float() / 255, size=28, mode="bilinear", antialias=True)
    pixels = (pixels - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    tokens = encoder.eval()(pixels)
    return torch.cat([tokens.cls_token, tokens.patch_tokens.mean(1)], dim=1)


def probe_accuracy(train_x, train_y, test_x, test_y) -> float:
    """Ridge-regression linear probe on standardised features (one-hot targets)."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    design = torch.cat([(train_x - mean) / std, torch.ones(len(train_x), 1)], 1)
    test = torch.cat([(test_x - mean) / std, torch.ones(len(test_x), 1)], 1)
    targets = torch.nn.functional.one_hot(train_y, NUM_CLASSES).float()
    weights = torch.linalg.solve(design.T @ design + torch.eye(design.shape[1]), design.T @ targets)
    return ((test @ weights).argmax(1) == test_y).float().mean().item()


@pytest.fixture
def one_thread():
    """Tiny tensors: one thread avoids the sync overhead of two (and of shared CI cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_short_training_learns_the_hidden_attribute_without_collapse(one_thread):
    generator = torch.Generator().manual_seed(1)
    train_frames, train_y = textures(512, generator)
    test_frames, test_y = textures(512, generator)

    steps, batch_size = 150, 48
    config = SSLConfig()
    config.crops.global_size, config.crops.local_size, config.crops.num_local, config.crops.blur_kernel = 28, 14, 4, 5
    config.heads.hidden_dim, config.heads.bottleneck_dim, config.heads.num_prototypes = 128, 32, 64
    config.optim.base_lr, config.optim.lr_scaling, config.optim.batch_size = 5e-3, "none", batch_size
    config.optim.drop_path = 0.0
    config.schedules.momentum = (0.9, 1.0)  # a short run needs a faster teacher

    encoder = DinoEncoder.from_size("tiny", image_size=28, patch_size=7, layerscale_value=0.1)
    random_acc = probe_accuracy(frozen_features(encoder, train_frames), train_y, frozen_features(encoder, test_frames), test_y)

    model = SSLModel(config, encoder, total_steps=steps).train()
    augment = MultiCropAugmentation.from_config(config, patch_size=7)
    trainer = SSLTrainer(model)
    log_k, dim = math.log(64), encoder.hidden_size
    for step in range(steps):
        batch = augment(train_frames[torch.randint(0, len(train_frames), (batch_size,))])
        out = trainer.step(batch, step)
        assert torch.isfinite(out.loss)
        if step >= 20:  # after the first steps: no uniform / one-hot teacher, spread features
            entropy = out.metrics["teacher_entropy"].item()
            assert 0.1 * log_k < entropy < log_k - 0.005, (step, entropy)
            assert out.metrics["feature_std"].item() > 0.5 / math.sqrt(dim), step

    trained = model.teacher_backbone
    trained_acc = probe_accuracy(frozen_features(trained, train_frames), train_y, frozen_features(trained, test_frames), test_y)
    print(f"linear probe: random-init {random_acc:.3f}, trained {trained_acc:.3f}")
    assert trained_acc > random_acc + 0.15, (random_acc, trained_acc)
    assert trained_acc > 0.55
