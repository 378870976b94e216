"""Encoder-benchmark probes against hand-checkable cases: a perfect encoder (features = target)
scores R² 1 / mIoU 1, a constant one R² 0 and the majority-class mIoU; the frame encoders' shapes."""

import numpy as np
import pytest
import torch

from lerobot_env_vla_dino.encoder_probes import (
    DinoFrames,
    PixelFrames,
    dense_probes,
    few_label_r2,
    mean_iou,
    ridge_fit_predict,
)


def _episodes(count: int = 120, per_episode: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    episode = np.arange(count) // per_episode
    train, test = np.flatnonzero(episode < 8), np.flatnonzero(episode >= 8)
    return episode, train, test


def test_ridge_fit_predict_recovers_a_linear_map():
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=(80, 5)), rng.normal(size=(5, 2))
    y = x @ w + 3.0
    x_eval = rng.normal(size=(10, 5))
    prediction = ridge_fit_predict(x, y, x_eval)
    assert prediction.shape == (10, 2)
    np.testing.assert_allclose(prediction, x_eval @ w + 3.0, atol=0.05)


def test_few_label_r2_perfect_constant_and_noise_encoders():
    rng = np.random.default_rng(1)
    _, train, test = _episodes()
    target = rng.normal(size=(120, 3))
    perfect = few_label_r2(target.copy(), target, train, test, budget=20, draws=4)
    assert perfect.mean > 0.999 and len(perfect.values) == 4 and perfect.std < 1e-3
    # with more features than labels the probe still finds the target among distractors
    padded = np.concatenate([target, rng.normal(size=(120, 30))], axis=1)
    assert few_label_r2(padded, target, train, test, budget=60, draws=2).mean > 0.9
    constant = few_label_r2(np.ones((120, 8)), target, train, test, budget=20, draws=3)
    # predicts the labelled rows' mean, which is also R²'s reference: exactly 0
    assert constant.values == pytest.approx([0.0] * 3, abs=1e-9)
    noise = few_label_r2(rng.normal(size=(120, 8)), target, train, test, budget=40, draws=3)
    assert noise.mean < 0.1
    with pytest.raises(ValueError, match="label budget 81 .* 80 training frames"):
        few_label_r2(target, target, train, test, budget=81)


def test_constant_encoder_r2_is_the_mean_predictor_by_hand():
    """Constant features → every prediction is the mean of the labelled rows → R² = 1 − SS(y − ȳ_labels)/SS(y − ȳ_labels) = 0."""
    target = np.array([0.0, 1.0, 2.0, 3.0, 10.0, 20.0])
    spread = few_label_r2(np.zeros((6, 2)), target, np.arange(4), np.array([4, 5]), budget=4, draws=1)
    assert spread.values == pytest.approx([0.0], abs=1e-9)


def test_mean_iou_by_hand():
    true = np.array([0, 0, 0, 1, 2, 2])
    assert mean_iou(true, true, 4) == 1.0
    # majority-class guess: class 0 IoU 3/6, classes 1 and 2 IoU 0; class 3 is absent from `true` → not averaged
    assert mean_iou(np.zeros(6, int), true, 4) == pytest.approx((3 / 6 + 0 + 0) / 3)
    guess = np.array([0, 0, 1, 1, 2, 3])  # class 0: 2/3, class 1: 1/2, class 2: 1/2
    assert mean_iou(guess, true, 4) == pytest.approx((2 / 3 + 1 / 2 + 1 / 2) / 3)


def _patch_grid(rng: np.random.Generator, count: int = 40) -> tuple[np.ndarray, np.ndarray]:
    depth = rng.uniform(0.5, 2.0, size=(count, 3, 3))
    classes = rng.choice(4, size=(count, 3, 3), p=[0.55, 0.25, 0.15, 0.05])
    return depth, classes


def test_dense_probes_perfect_encoder():
    rng = np.random.default_rng(2)
    depth, classes = _patch_grid(rng)
    patches = np.concatenate([depth[..., None], np.eye(4)[classes]], axis=-1)  # features = the targets
    train, test = np.arange(30), np.arange(30, 40)
    scores = dense_probes(patches, depth, classes, 4, train, test, budget=10, draws=2)
    assert scores.segmentation_miou.mean == pytest.approx(1.0)
    assert scores.depth_r2.mean > 0.999 and scores.depth_rmse.mean < 0.01
    assert len(scores.depth_rmse.values) == 2


def test_dense_probes_constant_encoder_gives_the_majority_class_miou():
    """Constant patch features → depth predicted as the training mean (R² ≤ 0) and every patch the
    training majority class k: mIoU = (share of test patches of class k) / (classes in the test set)."""
    depth = np.zeros((4, 2, 2))
    depth[2:] = np.array([[1.0, 2.0], [3.0, 4.0]])
    classes = np.array([[[0, 0], [0, 1]], [[0, 0], [2, 1]], [[0, 1], [1, 2]], [[0, 0], [0, 0]]])
    train, test = np.array([0, 1]), np.array([2, 3])  # training majority: class 0 (5 of 8)
    scores = dense_probes(np.ones((4, 2, 2, 3)), depth, classes, 3, train, test, budget=2, draws=1)
    # test patches: class 0 ×5, class 1 ×2, class 2 ×1 → IoU_0 = 5/8, others 0, over 3 classes present
    assert scores.segmentation_miou.mean == pytest.approx(5 / 8 / 3)
    assert scores.depth_r2.mean <= 0.0
    test_depth = depth[test].ravel()
    assert scores.depth_rmse.mean == pytest.approx(np.sqrt((test_depth**2).mean()))  # training mean depth is 0


def test_dense_probes_bad_input():
    rng = np.random.default_rng(3)
    depth, classes = _patch_grid(rng, 10)
    with pytest.raises(ValueError, match="patch grid"):
        dense_probes(np.zeros((10, 2, 3, 4)), depth, classes, 4, np.arange(5), np.arange(5, 10), budget=2)
    with pytest.raises(ValueError, match="label budget 6 .* 5 training frames"):
        dense_probes(np.zeros((10, 3, 3, 4)), depth, classes, 4, np.arange(5), np.arange(5, 10), budget=6)


# ---------------------------------------------------------------- frame encoders
def test_pixel_frames_by_hand():
    images = np.random.default_rng(4).integers(0, 256, size=(3, 28, 28, 3), dtype=np.uint8)
    encoded = PixelFrames(patch_size=14, pooled_side=12)(images)
    assert encoded.pooled.shape == (3, 3 * 12 * 12) and encoded.patches.shape == (3, 2, 2, 3 * 14 * 14)
    assert encoded.patch_size == 14
    block = images[1, 14:28, 0:14].astype(np.float32) / 255.0  # bottom-left patch, channel-major
    np.testing.assert_allclose(encoded.patches[1, 1, 0], block.transpose(2, 0, 1).ravel(), atol=1e-6)
    even = PixelFrames(patch_size=14, pooled_side=14)(images)
    np.testing.assert_allclose(even.pooled[0, 0], images[0, :2, :2, 0].mean() / 255.0, atol=1e-6)  # 2×2 area mean
    with pytest.raises(ValueError, match="patch"):
        PixelFrames(patch_size=14)(images[:, :27, :27])


def test_dino_frames_shapes_batches_and_bad_sizes():
    from vla_dino.encoder import DinoEncoder

    torch.manual_seed(0)
    encoder = DinoEncoder.from_size("tiny")
    images = np.random.default_rng(5).integers(0, 256, size=(5, 56, 56, 3), dtype=np.uint8)
    full = DinoFrames(encoder, "vit:tiny")(images)
    assert full.pooled.shape == (5, 64) and full.patches.shape == (5, 4, 4, 32) and full.patch_size == 14
    batched = DinoFrames(encoder, "vit:tiny", batch_size=2)(images)
    np.testing.assert_allclose(batched.pooled, full.pooled, atol=1e-5)
    np.testing.assert_allclose(batched.patches, full.patches, atol=1e-5)
    np.testing.assert_allclose(full.pooled[:, 32:], full.patches.mean(axis=(1, 2)), atol=1e-5)  # [CLS, mean patch]
    with pytest.raises(ValueError, match="vit:tiny.*50×50.*patch size 14"):
        DinoFrames(encoder, "vit:tiny")(images[:, :50, :50])
