"""A cheap frozen probe of the teacher during pretraining, on held-out episodes of the run's own
frames: no labels needed, so it works on the logs a user brings.

The known lever for pretraining (and continued pretraining) is to watch a probe, not the loss:
the DINO loss can fall while features stop improving or collapse (facebookresearch/dinov2
issues on continued pretraining report k-NN dropping while the loss looks fine).

Metrics (teacher backbone, eval mode, features = [CLS, mean patch] of the last layer):
- `probe/retrieval_changed`: each held-out frame under a fixed photometric change (hue rotation,
  brightness and contrast: what lighting and colour changes do to a real camera) queries the
  clean held-out frames; a hit is a nearest neighbour (cosine) from the same episode within
  ±`window` frames. Chance is reported beside it (`probe/retrieval_chance`).
- `probe/pixels_retrieval_changed` (first probe only): the same retrieval on raw pixels (the frame
  averaged down to 12×12), the baseline a useful encoder should beat.
- `probe/rankme`: RankMe (Garrido et al. 2023), exp of the entropy of the normalised singular
  values of the feature matrix: its effective dimension (collapse → 1).

`ProbeMonitor` warns when the main metric falls well below its best or has not improved for
`patience` probes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from vla_dino.encoder import DinoEncoder
from vla_dino.ssl.photometric import adjust_brightness, adjust_contrast, adjust_hue


@dataclass
class ProbeFrames:
    """Held-out frames: pixels (N, 3, S, S) uint8, their episode ids (N,) and frame indices (N,)."""

    pixels: torch.Tensor
    episode: torch.Tensor
    index: torch.Tensor

    def __post_init__(self) -> None:
        if not (len(self.pixels) == len(self.episode) == len(self.index)):
            raise ValueError("ProbeFrames: pixels, episode and index must have the same length")
        if len(self.pixels) < 2:
            raise ValueError(f"the probe needs at least 2 held-out frames, got {len(self.pixels)}")


def changed_view(pixels: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A fixed, seeded photometric change per frame (float in [0, 1] → same): hue ±0.1–0.5 turn,
    brightness and contrast ×0.6–1.4."""
    generator = torch.Generator().manual_seed(seed)
    count = len(pixels)
    hue = (torch.rand(count, generator=generator) * 0.4 + 0.1) * torch.where(torch.rand(count, generator=generator) < 0.5, -1.0, 1.0)
    brightness = torch.rand(count, generator=generator) * 0.8 + 0.6
    contrast = torch.rand(count, generator=generator) * 0.8 + 0.6
    x = adjust_hue(pixels, hue.view(-1, 1, 1, 1) % 1.0)
    x = adjust_brightness(x, brightness.view(-1, 1, 1, 1))
    return adjust_contrast(x, contrast.view(-1, 1, 1, 1)).clamp(0.0, 1.0)


def rankme(features: torch.Tensor) -> float:
    """exp(−Σ p_k log p_k) with p = σ / Σσ (+ε), σ the singular values of the (N, D) features."""
    singular = torch.linalg.svdvals(features.double())
    p = singular / singular.sum() + 1e-12
    return float(torch.exp(-(p * p.log()).sum()))


def retrieval_hits(
    queries: torch.Tensor, gallery: torch.Tensor, episode: torch.Tensor, index: torch.Tensor, window: int
) -> tuple[float, float]:
    """(hit rate, chance): query i's nearest gallery row (cosine) is a hit when it comes from episode[i]
    within ±window frames of index[i] (gallery row j is frame index[j] of episode[j]); chance = the
    mean fraction of gallery rows that would count."""
    similarity = F.normalize(queries.double(), dim=1) @ F.normalize(gallery.double(), dim=1).T
    good = (episode[:, None] == episode[None, :]) & ((index[:, None] - index[None, :]).abs() <= window)
    hits = good[torch.arange(len(queries)), similarity.argmax(dim=1)].double().mean()
    return float(hits), float(good.double().sum(1).mean() / gallery.shape[0])


@torch.no_grad()
def teacher_features(encoder: DinoEncoder, pixels: torch.Tensor, size: int, batch_size: int = 64) -> torch.Tensor:
    """[CLS, mean patch] of the last layer for float pixels (N, 3, H, W) in [0, 1], resized to `size`²."""
    was_training = encoder.training
    encoder.eval()
    parameter = next(encoder.parameters())
    mean = torch.tensor(encoder.preprocessor.mean, device=parameter.device).view(1, 3, 1, 1)
    std = torch.tensor(encoder.preprocessor.std, device=parameter.device).view(1, 3, 1, 1)
    out = []
    for start in range(0, len(pixels), batch_size):
        x = pixels[start : start + batch_size].to(parameter.device, torch.float32)
        if x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        tokens = encoder(((x - mean) / std).to(parameter.dtype))
        out.append(torch.cat([tokens.cls_token, tokens.patch_tokens.mean(1)], 1).float().cpu())
    encoder.train(was_training)
    return torch.cat(out)


def pixel_retrieval(frames: ProbeFrames, window: int = 2, seed: int = 0, side: int = 12) -> float:
    """`probe/retrieval_changed` with raw pixels (averaged down to side × side) as the features."""
    clean = frames.pixels.float() / 255.0
    pooled = lambda x: F.adaptive_avg_pool2d(x, side).flatten(1)  # noqa: E731
    return retrieval_hits(pooled(changed_view(clean, seed)), pooled(clean), frames.episode, frames.index, window)[0]


def probe_teacher(encoder: DinoEncoder, frames: ProbeFrames, size: int, window: int = 2, seed: int = 0) -> dict[str, float]:
    """The probe's metrics (see the module docstring) for `encoder` on `frames`."""
    clean = frames.pixels.float() / 255.0
    clean_features = teacher_features(encoder, clean, size)
    changed_features = teacher_features(encoder, changed_view(clean, seed), size)
    changed, chance = retrieval_hits(changed_features, clean_features, frames.episode, frames.index, window)
    return {"probe/retrieval_changed": changed, "probe/retrieval_chance": chance, "probe/rankme": rankme(clean_features)}


@dataclass
class ProbeMonitor:
    """Warns when `metric` falls more than `max_drop` below its best, or has not improved on its
    best by `min_gain` for `patience` probes in a row (both relative to the best for RankMe,
    whose scale is the feature dimension)."""

    metric: str = "probe/retrieval_changed"
    max_drop: float = 0.05
    patience: int = 5
    min_gain: float = 0.005
    best: float = field(default=-math.inf)
    best_step: int = -1
    stale: int = 0

    def check(self, step: int, metrics: dict[str, float]) -> list[str]:
        value = metrics[self.metric]
        scale = self.best if self.metric == "probe/rankme" and self.best > 0 else 1.0
        if value > self.best + self.min_gain * scale:
            self.best, self.best_step, self.stale = value, step, 0
            return []
        self.stale += 1
        problems = []
        if value < self.best - self.max_drop * scale:
            problems.append(
                f"{self.metric} fell to {value:.3f} from its best {self.best:.3f} at step {self.best_step}: features are getting "
                "worse on held-out frames (for continued pretraining: lower the lr or stop at the best checkpoint)"
            )
        elif self.stale == self.patience:
            problems.append(f"{self.metric} has not improved on {self.best:.3f} (step {self.best_step}) for {self.patience} probes")
        return problems

    def state_dict(self) -> dict[str, float]:
        return {"best": self.best, "best_step": self.best_step, "stale": self.stale}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.best, self.best_step, self.stale = float(state["best"]), int(state["best_step"]), int(state["stale"])


# ---------------------------------------------------------------- held-out frames of the run
def hold_out_sources(sources: list, fraction: float, seed: int) -> tuple[list, list]:
    """(training sources, held-out sources): a seeded `fraction` of the episodes (at least one),
    every camera of a held-out episode with it, so no view of a probed moment is trained on.
    With a single episode nothing can be held out: ValueError naming the setting."""
    episodes = sorted({(str(s.path), s.episode) for s in sources})
    if len(episodes) < 2:
        raise ValueError(
            f"log.probe_every_steps needs at least 2 episodes to hold one out for the probe; the frames hold {len(episodes)}"
        )
    count = max(1, round(fraction * len(episodes)))
    order = torch.randperm(len(episodes), generator=torch.Generator().manual_seed(seed)).tolist()
    held = {episodes[i] for i in order[:count]}
    keep = [s for s in sources if (str(s.path), s.episode) not in held]
    return keep, [s for s in sources if (str(s.path), s.episode) in held]


def load_probe_frames(dataset, max_frames: int) -> ProbeFrames:
    """Up to `max_frames` frames evenly spaced over `dataset` (a FrameDataset of the held-out
    sources); unreadable ones are left out."""
    picks = torch.linspace(0, len(dataset) - 1, min(max_frames, len(dataset))).round().long().unique().tolist()
    samples = [sample for sample in (dataset[i] for i in picks) if sample is not None]
    episodes = {name: k for k, name in enumerate(dict.fromkeys(s["source"] for s in samples))}
    return ProbeFrames(
        pixels=torch.stack([s["frame"] for s in samples]),
        episode=torch.tensor([episodes[s["source"]] for s in samples]),
        index=torch.tensor([s["frame_index"] for s in samples]),
    )
