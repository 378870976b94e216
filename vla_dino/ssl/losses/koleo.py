"""KoLeo (Kozachenko-Leonenko) entropy regulariser on a batch of features."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def koleo_loss(features: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """L_KoLeo = −(1/n) Σ_i log(‖x̂_i − x̂_nn(i)‖ + eps), x̂ = x / ‖x‖, nn(i) = the other row
    with the highest cosine similarity. fp32 with autocast off; the distance uses
    `pairwise_distance`'s eps inside the norm (finite gradient for duplicates)."""
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"KoLeo needs a (n >= 2, D) batch; got {tuple(features.shape)}")
    with torch.autocast(device_type=features.device.type, enabled=False):
        x = F.normalize(features.float(), dim=-1, eps=eps)
        similarity = x @ x.t()
        similarity.fill_diagonal_(-2.0)  # below any cosine: never pick yourself
        neighbour = similarity.argmax(dim=1)
        distance = F.pairwise_distance(x, x[neighbour], eps=eps)
        return -torch.log(distance + eps).mean()
