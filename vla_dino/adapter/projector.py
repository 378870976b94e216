"""Projectors from fused patch features (width C) to token width d."""

from __future__ import annotations

from torch import nn


def build_projector(kind: str, in_dim: int, out_dim: int) -> nn.Module:
    """- "fused-gelu-mlp" (OpenVLA): Linear(C, 4C) → GELU → Linear(4C, d) → GELU → Linear(d, d)
    - "mlp": Linear(C, d) → GELU → Linear(d, d)
    - "linear": Linear(C, d)
    - "none": identity (tokens keep width C)
    """
    if kind == "fused-gelu-mlp":
        hidden = 4 * in_dim
        return nn.Sequential(
            nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim)
        )
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"projector={kind!r}; expected fused-gelu-mlp, mlp, linear or none")


def projector_out_dim(kind: str, in_dim: int, out_dim: int) -> int:
    return in_dim if kind == "none" else out_dim
