"""Token reduction per camera, to cut the head's cost: (B, h·w, D) → (B, K, D)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Pool2x2(nn.Module):
    """Average over 2×2 neighbouring patches: K = ⌈h/2⌉·⌈w/2⌉ (edge windows average what exists)."""

    def __init__(self, grid: tuple[int, int]) -> None:
        super().__init__()
        self.grid = grid

    @property
    def num_tokens(self) -> int:
        return math.ceil(self.grid[0] / 2) * math.ceil(self.grid[1] / 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, _, dim = tokens.shape
        feature_map = tokens.transpose(1, 2).reshape(batch, dim, *self.grid)
        pooled = F.avg_pool2d(feature_map, kernel_size=2, stride=2, ceil_mode=True)
        return pooled.flatten(2).transpose(1, 2)


class AttentionPool(nn.Module):
    """K learned queries cross-attend to the (layer-normed) tokens: softmax(q·kᵀ/√d_h)·v per head."""

    def __init__(self, dim: int, num_tokens: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention_pool_heads={num_heads} does not divide the token width {dim}")
        self.num_tokens = num_tokens
        self.queries = nn.Parameter(torch.randn(num_tokens, dim) * 0.02)
        self.norm = nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, num_heads, batch_first=True)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        keys = self.norm(tokens)
        queries = self.queries.unsqueeze(0).expand(tokens.shape[0], -1, -1)
        return self.attention(queries, keys, keys, need_weights=False)[0]


def build_token_reduction(
    kind: str, dim: int, grid: tuple[int, int], num_pooled_tokens: int, num_heads: int
) -> nn.Module | None:
    """None for "none"; else a module with `num_tokens` and `forward((B, h·w, D)) -> (B, K, D)`."""
    if kind == "none":
        return None
    if kind == "pool2x2":
        return Pool2x2(grid)
    if kind == "attention_pool":
        return AttentionPool(dim, num_pooled_tokens, num_heads)
    raise ValueError(f"token_reduction={kind!r}; expected none, pool2x2 or attention_pool")
