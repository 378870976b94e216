"""The DINO / iBOT projection head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class NormalizedPrototypes(nn.Module):
    """`weight_norm(Linear(bottleneck, K, bias=False))` with the gain frozen at 1, written out:
    logits = x · (W / ‖W‖_row)ᵀ, i.e. cosine similarity to K prototypes when x is unit-norm."""

    def __init__(self, in_dim: int, num_prototypes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_prototypes, in_dim))
        nn.init.trunc_normal_(self.weight, std=0.02)

    def normalized_weight(self) -> torch.Tensor:
        """W / ‖W‖_row (K, in_dim): the prototypes the logits are cosine similarities to."""
        return F.normalize(self.weight, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.normalized_weight())


class DinoHead(nn.Module):
    """MLP `Linear(D, h)→GELU→Linear(h, h)→GELU→Linear(h, bottleneck)`, L2-normalise, then
    weight-normalised prototypes (`last_layer`, frozen during the first steps)."""

    def __init__(self, in_dim: int, num_prototypes: int, hidden_dim: int = 2048, bottleneck_dim: int = 256, num_layers: int = 3) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"head num_layers {num_layers}; expected >= 1")
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for index, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(d_in, d_out))
            if index < num_layers - 1:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        for module in self.mlp:
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        self.last_layer = NormalizedPrototypes(bottleneck_dim, num_prototypes)

    @property
    def num_prototypes(self) -> int:
        return self.last_layer.weight.shape[0]

    def bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        """The L2-normalised MLP output (…, bottleneck_dim), before the prototypes."""
        x = self.mlp(x)
        return F.normalize(x, dim=-1, eps=1e-6 if x.dtype == torch.float16 else 1e-12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(self.bottleneck(x))
