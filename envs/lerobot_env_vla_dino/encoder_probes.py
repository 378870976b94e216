"""Frozen-feature probes for the encoder benchmark: few-label state regression and dense
per-patch depth and segmentation, all linear (ridge, closed form) so they measure the features
and not the probe.

- `few_label_r2`: ridge from pooled features to a state variable, fit on `budget` labelled frames
  drawn from the training episodes (α by K-fold CV on those labels only), R² on held-out episodes;
  repeated over `draws` label draws → mean and spread.
- `depth_probe`: ridge from each patch token to its patch's mean depth; RMSE (m) and R².
- `segmentation_probe`: ridge from each patch token to the one-hot class of its patch (a linear
  least-squares classifier), argmax → mIoU = mean over classes present in the test set of
  |pred ∩ true| / |pred ∪ true|.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from lerobot_env_vla_dino.probes import DEFAULT_ALPHAS, _ridge_predictions, r2_score


@dataclass
class EncodedFrames:
    pooled: np.ndarray  # (N, D) one vector per frame
    patches: np.ndarray | None  # (N, gh, gw, Dp) one vector per patch, or None for encoders without a grid
    patch_size: int | None  # pixels per patch side at the frames' resolution


class FrameEncoder(Protocol):
    name: str

    def __call__(self, images: np.ndarray) -> EncodedFrames: ...


# ---------------------------------------------------------------- ridge with CV on the labelled rows
def ridge_fit_predict(
    x_train: np.ndarray, y_train: np.ndarray, x_eval: np.ndarray, alphas: tuple[float, ...] = DEFAULT_ALPHAS,
    folds: int = 4, seed: int = 0,
) -> np.ndarray:
    """Ridge predictions for `x_eval`; α picked by `folds`-fold CV (random folds) over the training rows."""
    x = torch.as_tensor(x_train, dtype=torch.float64)
    y = torch.as_tensor(np.asarray(y_train, dtype=np.float64).reshape(len(x_train), -1))
    alpha_t = torch.tensor(alphas, dtype=torch.float64)
    fold = np.random.default_rng(seed).permutation(len(x)) % folds
    errors = torch.zeros(len(alphas), dtype=torch.float64)
    for k in range(folds):
        fit, val = torch.as_tensor(fold != k), torch.as_tensor(fold == k)
        if fit.sum() < 2 or val.sum() < 1:
            continue
        errors += ((_ridge_predictions(x[fit], y[fit], x[val], alpha_t) - y[val]) ** 2).mean(dim=(1, 2))
    best = int(torch.argmin(errors))
    x_e = torch.as_tensor(x_eval, dtype=torch.float64)
    return _ridge_predictions(x, y, x_e, alpha_t[best : best + 1])[0].numpy()


@dataclass
class Spread:
    """A metric over repeated label draws."""

    mean: float
    std: float
    values: list[float]

    @classmethod
    def of(cls, values: list[float]) -> "Spread":
        return cls(float(np.mean(values)), float(np.std(values)), [float(v) for v in values])


def _draw(pool: np.ndarray, budget: int, rng: np.random.Generator, what: str) -> np.ndarray:
    if budget > len(pool):
        raise ValueError(f"label budget {budget} {what} is larger than the {len(pool)} training frames available")
    return rng.choice(pool, size=budget, replace=False)


def few_label_r2(
    features: np.ndarray, target: np.ndarray, train_rows: np.ndarray, test_rows: np.ndarray, budget: int,
    draws: int = 5, seed: int = 0,
) -> Spread:
    """R² on `test_rows` of ridge probes fit on `budget` frames drawn from `train_rows`, over `draws` draws."""
    rng = np.random.default_rng(seed)
    y = np.asarray(target, dtype=np.float64).reshape(len(features), -1)
    scores = []
    for _ in range(draws):
        rows = _draw(train_rows, budget, rng, "(frames)")
        prediction = ridge_fit_predict(features[rows], y[rows], features[test_rows], seed=int(rng.integers(1 << 30)))
        scores.append(r2_score(torch.as_tensor(y[test_rows]), torch.as_tensor(prediction), torch.as_tensor(y[rows].mean(0))))
    return Spread.of(scores)


def mean_iou(predicted: np.ndarray, true: np.ndarray, num_classes: int) -> float:
    """Mean over the classes present in `true` of |pred ∩ true| / |pred ∪ true|."""
    ious = []
    for k in range(num_classes):
        truth, guess = true == k, predicted == k
        if truth.any():
            ious.append((truth & guess).sum() / (truth | guess).sum())
    return float(np.mean(ious))


@dataclass
class DenseScores:
    depth_rmse: Spread  # metres
    depth_r2: Spread
    segmentation_miou: Spread


def dense_probes(
    patches: np.ndarray, depth: np.ndarray, classes: np.ndarray, num_classes: int, train_rows: np.ndarray,
    test_rows: np.ndarray, budget: int, draws: int = 3, seed: int = 0,
) -> DenseScores:
    """Linear per-patch probes fit on all patches of `budget` frames from `train_rows`.

    `patches` (N, gh, gw, D), `depth` (N, gh, gw) mean depth per patch, `classes` (N, gh, gw) majority class.
    """
    if patches.shape[:3] != depth.shape or depth.shape != classes.shape:
        raise ValueError(f"patch grid {patches.shape[:3]} does not match the label grids {depth.shape} / {classes.shape}")
    rng = np.random.default_rng(seed)
    dim = patches.shape[-1]
    flat = lambda rows: patches[rows].reshape(-1, dim)  # noqa: E731
    rmse, r2, miou = [], [], []
    x_test = flat(test_rows)
    depth_test = depth[test_rows].reshape(-1, 1).astype(np.float64)
    class_test = classes[test_rows].reshape(-1)
    for _ in range(draws):
        rows = _draw(train_rows, budget, rng, "(frames, all their patches)")
        fold_seed = int(rng.integers(1 << 30))
        depth_train = depth[rows].reshape(-1, 1).astype(np.float64)
        depth_pred = ridge_fit_predict(flat(rows), depth_train, x_test, seed=fold_seed)
        rmse.append(float(np.sqrt(((depth_pred - depth_test) ** 2).mean())))
        r2.append(r2_score(torch.as_tensor(depth_test), torch.as_tensor(depth_pred), torch.as_tensor(depth_train.mean(0))))
        one_hot = np.eye(num_classes)[classes[rows].reshape(-1)]
        scores = ridge_fit_predict(flat(rows), one_hot, x_test, seed=fold_seed)
        miou.append(mean_iou(scores.argmax(1), class_test, num_classes))
    return DenseScores(Spread.of(rmse), Spread.of(r2), Spread.of(miou))


# ---------------------------------------------------------------- encoders
class DinoFrames:
    """A `DinoEncoder` (frozen): pooled = [CLS, mean patch] of the last layer (final norm), patches = its patch tokens.

    Frames are fed at their own resolution, which must be a multiple of the patch size.
    """

    def __init__(self, encoder, name: str, batch_size: int = 64) -> None:
        self.encoder, self.name, self.batch_size = encoder.eval(), name, batch_size

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> EncodedFrames:
        from vla_dino.encoder import ImagePreprocessor

        side, patch = images.shape[1], self.encoder.patch_size
        if images.shape[1] != images.shape[2] or side % patch:
            raise ValueError(
                f"encoder {self.name!r}: frames are {images.shape[1]}×{images.shape[2]} px; need square frames whose side "
                f"is a multiple of its patch size {patch} (render the benchmark at --image_size={patch * max(1, side // patch)})"
            )
        preprocessor = ImagePreprocessor(size=side, patch_size=patch)
        pooled, grids = [], []
        for start in range(0, len(images), self.batch_size):
            tokens = self.encoder(preprocessor(images[start : start + self.batch_size]))
            gh, gw = tokens.grid_size
            pooled.append(torch.cat([tokens.cls_token, tokens.patch_tokens.mean(1)], 1).float())
            grids.append(tokens.patch_tokens.float().reshape(len(tokens.patch_tokens), gh, gw, -1))
        return EncodedFrames(torch.cat(pooled).numpy(), torch.cat(grids).numpy(), patch)


class PixelFrames:
    """Raw pixels: pooled = the frame downsampled to `pooled_side`² (area average), patches = each
    `patch`-px patch's pixels flattened (what a linear patch embedding sees)."""

    def __init__(self, patch_size: int, pooled_side: int = 12, name: str = "pixels") -> None:
        self.patch_size, self.pooled_side, self.name = patch_size, pooled_side, name

    def __call__(self, images: np.ndarray) -> EncodedFrames:
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
        pooled = torch.nn.functional.adaptive_avg_pool2d(x, self.pooled_side).flatten(1)
        count, _, height, width = x.shape
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(f"encoder {self.name!r}: frames are {height}×{width} px, not a multiple of its patch_size={p}")
        grid = x.reshape(count, 3, height // p, p, width // p, p).permute(0, 2, 4, 1, 3, 5).reshape(count, height // p, width // p, -1)
        return EncodedFrames(pooled.numpy(), grid.numpy(), p)
