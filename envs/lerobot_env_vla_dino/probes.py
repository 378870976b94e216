"""Probes of frozen image features: how much simulator state (object pose, gripper position) they hold.

- `ridge_probe`: closed-form ridge regression  W = (XᵀX + αI)⁻¹XᵀY  on standardised features,
  α chosen per variable by K-fold CV on the training episodes, scored by held-out R²
  R² = 1 − Σ‖y − ŷ‖² / Σ‖y − ȳ_train‖²  on whole held-out episodes (no temporal leakage).
  R² ≈ 1: the variable is linearly decodable; ≤ 0: no better than predicting the mean.
- `knn_retrieval`: for each frame, its k nearest frames in feature space (cosine, other episodes
  only) and the mean state distance to them, against random pairs (ratio < 1: features group
  similar states).
- `probe_dataset`: both, on frames of a LeRobotDataset written by `collect_demos`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

DEFAULT_ALPHAS = tuple(10.0**p for p in range(-3, 5))


def _split_groups(groups: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    unique = rng.permutation(np.unique(groups))
    if len(unique) < 2:
        raise ValueError("need frames from at least 2 episodes to hold some out")
    held = unique[: max(1, int(round(len(unique) * fraction)))]
    test = np.isin(groups, held)
    return ~test, test


def _ridge_predictions(x_train: torch.Tensor, y_train: torch.Tensor, x_eval: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """Predictions (A, N_eval, K) for every α at once, from one SVD: W_α = V diag(s/(s²+α)) UᵀY."""
    mean, std = x_train.mean(0), x_train.std(0).clamp_min(1e-8)
    x_train, x_eval = (x_train - mean) / std, (x_eval - mean) / std
    y_mean = y_train.mean(0)
    u, s, vh = torch.linalg.svd(x_train, full_matrices=False)
    uty = u.T @ (y_train - y_mean)  # (r, K)
    shrink = s[None, :] / (s[None, :] ** 2 + alphas[:, None])  # (A, r)
    weights = torch.einsum("rd,ar,rk->adk", vh, shrink, uty)  # (A, D, K)
    return torch.einsum("nd,adk->ank", x_eval, weights) + y_mean


def r2_score(y_true: torch.Tensor, y_pred: torch.Tensor, y_reference_mean: torch.Tensor) -> float:
    """1 − SS_res/SS_tot summed over the variable's dimensions (mean taken from the training set)."""
    ss_res = ((y_true - y_pred) ** 2).sum()
    ss_tot = ((y_true - y_reference_mean) ** 2).sum()
    return float(1.0 - ss_res / ss_tot.clamp_min(1e-12))


@dataclass
class ProbeResult:
    r2: dict[str, float]  # held-out R² per variable
    alpha: dict[str, float]  # α chosen by CV per variable
    num_train: int
    num_test: int


def ridge_probe(
    features: np.ndarray,
    targets: dict[str, np.ndarray],
    groups: np.ndarray,
    alphas: tuple[float, ...] = DEFAULT_ALPHAS,
    test_fraction: float = 0.25,
    folds: int = 4,
    seed: int = 0,
) -> ProbeResult:
    """Ridge probes from `features` (N, D) to each target (N,) or (N, k); `groups` (N,) are episode ids.

    Whole episodes are held out for testing; α is picked by `folds`-fold CV over the remaining
    episodes (validation MSE), then the probe is refit on all training episodes.
    """
    features = np.asarray(features)
    if features.ndim != 2:
        raise ValueError(f"features shape {features.shape}; expected (N, D)")
    count = len(features)
    groups = np.asarray(groups)
    if groups.shape != (count,):
        raise ValueError(f"groups shape {groups.shape}; expected ({count},) episode ids")
    rng = np.random.default_rng(seed)
    train, test = _split_groups(groups, test_fraction, rng)
    x = torch.as_tensor(features, dtype=torch.float64)
    alpha_t = torch.tensor(alphas, dtype=torch.float64)
    train_groups = rng.permutation(np.unique(groups[train]))
    fold_of = {g: i % min(folds, len(train_groups)) for i, g in enumerate(train_groups)}
    fold = np.array([fold_of.get(g, -1) for g in groups])
    r2, chosen = {}, {}
    for name, values in targets.items():
        y = torch.as_tensor(np.asarray(values, dtype=np.float64).reshape(count, -1))
        if y.shape[0] != count:
            raise ValueError(f"target {name!r} has {y.shape[0]} rows; expected {count}")
        errors = torch.zeros(len(alphas), dtype=torch.float64)
        for k in range(min(folds, len(train_groups))):
            fit, val = train & (fold != k), train & (fold == k)
            if fit.sum() == 0 or val.sum() == 0:
                continue
            predictions = _ridge_predictions(x[fit], y[fit], x[val], alpha_t)
            errors += ((predictions - y[val]) ** 2).mean(dim=(1, 2))
        best = int(torch.argmin(errors))
        prediction = _ridge_predictions(x[train], y[train], x[test], alpha_t[best : best + 1])[0]
        r2[name] = r2_score(y[test], prediction, y[train].mean(0))
        chosen[name] = float(alphas[best])
    return ProbeResult(r2=r2, alpha=chosen, num_train=int(train.sum()), num_test=int(test.sum()))


@dataclass
class RetrievalResult:
    k: int
    neighbour_state_distance: float  # mean distance (standardised state) to the k nearest frames
    random_state_distance: float  # mean distance between random frame pairs
    ratio: float = field(init=False)

    def __post_init__(self) -> None:
        self.ratio = self.neighbour_state_distance / max(self.random_state_distance, 1e-12)


def knn_retrieval(
    features: np.ndarray, states: np.ndarray, groups: np.ndarray, k: int = 5, seed: int = 0
) -> RetrievalResult:
    """k-NN (cosine) in feature space among frames of *other* episodes; state distances are
    Euclidean on per-dimension standardised states."""
    feats = torch.nn.functional.normalize(torch.as_tensor(np.asarray(features), dtype=torch.float64), dim=1)
    state = torch.as_tensor(np.asarray(states, dtype=np.float64).reshape(len(feats), -1))
    state = (state - state.mean(0)) / state.std(0).clamp_min(1e-8)
    groups_t = torch.as_tensor(np.unique(np.asarray(groups), return_inverse=True)[1])
    similarity = feats @ feats.T
    similarity[groups_t[:, None] == groups_t[None, :]] = -torch.inf  # same episode: too easy
    k = min(k, int((groups_t[None, :] != groups_t[:, None]).sum(1).min()))
    if k < 1:
        raise ValueError("need frames from at least 2 episodes for retrieval")
    neighbours = similarity.topk(k, dim=1).indices
    neighbour_distance = (state[:, None, :] - state[neighbours]).norm(dim=-1).mean()
    rng = np.random.default_rng(seed)
    a, b = rng.integers(len(state), size=(2, 20 * len(state)))
    random_distance = (state[a] - state[b]).norm(dim=-1).mean()
    return RetrievalResult(k=k, neighbour_state_distance=float(neighbour_distance), random_state_distance=float(random_distance))


# ---------------------------------------------------------------- encoders and datasets
FeatureFn = Callable[[np.ndarray], Any]


def encoder_features(encoder: Any, images: np.ndarray, batch_size: int = 64, image_size: int | None = None) -> np.ndarray:
    """(N, H, W, 3) uint8 frames → (N, D) features.

    A `DinoEncoder` gives [CLS, mean patch token] of its last layer (2·hidden); any other callable
    is called on uint8 batches and must return (B, D).
    """
    from vla_dino.encoder import DinoEncoder, ImagePreprocessor

    outputs = []
    if isinstance(encoder, DinoEncoder):
        encoder.eval()
        size = image_size or int(encoder.config.image_size)
        preprocessor = ImagePreprocessor(size=size, patch_size=encoder.patch_size)
        parameter = next(encoder.parameters())
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                pixels = preprocessor(images[start : start + batch_size]).to(parameter.device, parameter.dtype)
                tokens = encoder(pixels)
                outputs.append(torch.cat([tokens.cls_token, tokens.patch_tokens.mean(1)], 1).float().cpu())
        return torch.cat(outputs).numpy()
    for start in range(0, len(images), batch_size):
        batch = encoder(images[start : start + batch_size])
        batch = batch.detach().float().cpu().numpy() if isinstance(batch, torch.Tensor) else np.asarray(batch, np.float32)
        if batch.ndim != 2:
            raise ValueError(f"feature function returned shape {batch.shape}; expected (B, D)")
        outputs.append(batch)
    return np.concatenate(outputs)


def load_demo_arrays(root: str | Path, camera: str | None = None, repo_id: str = "vla_dino/demos") -> dict[str, Any]:
    """A dataset written by `collect_demos`, as arrays: `images` (N, H, W, 3) uint8 of one camera,
    `episodes` (N,), `agent_pos` (N, S), `actions` (N, A), `states` {name: (N, k)} and `camera`."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    dataset = LeRobotDataset(repo_id, root=root)
    cameras = list(dataset.meta.camera_keys)
    key = f"observation.images.{camera}" if camera else cameras[0]
    if key not in cameras:
        raise KeyError(f"{root}: no camera {key!r}; cameras are {cameras}")
    state_keys = [k for k in dataset.features if k.startswith("sim_state.")]
    if not state_keys:
        raise KeyError(f"{root}: no sim_state.* columns; collect the dataset with lerobot_env_vla_dino.collect")
    columns: dict[str, list] = {k: [] for k in ["episode_index", "observation.state", "action", *state_keys]}
    images = []
    for index in range(len(dataset)):
        item = dataset[index]
        images.append((item[key].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
        for k, values in columns.items():
            values.append(item[k].numpy())
    return {
        "images": np.stack(images),
        "camera": key.removeprefix("observation.images."),
        "episodes": np.array(columns["episode_index"]).astype(int),
        "agent_pos": np.stack(columns["observation.state"]).astype(np.float32),
        "actions": np.stack(columns["action"]).astype(np.float32),
        "states": {k.removeprefix("sim_state."): np.stack(columns[k]) for k in state_keys},
    }


@dataclass
class DatasetProbeReport:
    probe: ProbeResult
    retrieval: RetrievalResult
    num_frames: int
    feature_dim: int


def probe_dataset(
    root: str | Path, encoder: Any, camera: str | None = None, variables: list[str] | None = None, k: int = 5, seed: int = 0
) -> DatasetProbeReport:
    """Ridge probes and k-NN retrieval of the dataset's simulator state from `encoder` features.

    Variables that never vary in the dataset (e.g. a fixed goal) are skipped: R² is undefined there.
    """
    data = load_demo_arrays(root, camera)
    states = data["states"]
    names = variables or [n for n, v in states.items() if np.ptp(v, axis=0).max() > 1e-6]
    missing = [n for n in names if n not in states]
    if missing:
        raise KeyError(f"{root}: unknown state variables {missing}; available {sorted(states)}")
    features = encoder_features(encoder, data["images"])
    probe = ridge_probe(features, {n: states[n] for n in names}, data["episodes"], seed=seed)
    joint = np.concatenate([states[n].reshape(len(features), -1) for n in names], axis=1)
    retrieval = knn_retrieval(features, joint, data["episodes"], k=k, seed=seed)
    return DatasetProbeReport(probe=probe, retrieval=retrieval, num_frames=len(features), feature_dim=features.shape[1])
