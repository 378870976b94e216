"""Action guard: a chunk with NaN/inf or outside the robot's bounds never reaches the robot.

A policy can return non-finite actions from finite inputs (an ``observation.state`` of 1e30 turns a
random ACT's whole chunk into NaN: the normaliser's ``(x - mean) / std`` overflows float32 inside
the network), and a bad checkpoint can return finite actions far outside anything it was trained
on. :class:`ActionGuard` checks every chunk before it leaves :class:`~vla_dino.runtime.runtime.PolicyRuntime`,
the policy server and :class:`~vla_dino.runtime.chunking.ControlLoop`:

- shape ``(T, action_dim)`` with ``T >= 1``;
- every value finite;
- every value inside ``[low, high]`` per action dimension. Bounds come either from the
  checkpoint's dataset statistics (the ``min``/``max`` that LeRobot's ``compute_stats`` stores for
  ``action`` and that the postprocessor's ``UnnormalizerProcessorStep`` carries), widened by
  ``margin`` × (max − min) on each side because a good policy may extrapolate a little, or from
  explicit limits (joint limits, workspace limits), which are what a real robot should use.

A violation raises :class:`UnsafeActionError` whose ``reason`` is one of ``REASONS``; by default
out-of-bounds chunks are refused, ``clip=True`` clips them instead (non-finite chunks are always
refused: there is nothing safe to clip NaN to).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

REASONS = ("bad_shape", "non_finite", "out_of_bounds")


class UnsafeActionError(RuntimeError):
    """A chunk failed the guard; ``reason`` is one of :data:`REASONS`, the message says where."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ActionGuard:
    """Checks chunks ``(T, action_dim)``: finite, and inside ``[low, high]`` when bounds are set."""

    def __init__(
        self,
        action_dim: int,
        low: Sequence[float] | np.ndarray | None = None,
        high: Sequence[float] | np.ndarray | None = None,
        clip: bool = False,
        source: str = "config",
    ) -> None:
        if action_dim < 1:
            raise ValueError(f"action_dim must be >= 1, got {action_dim}")
        self.action_dim = int(action_dim)
        self.low = self._bound("low", low)
        self.high = self._bound("high", high)
        if self.low is not None and self.high is not None and not (self.low <= self.high).all():
            bad = int(np.flatnonzero(self.low > self.high)[0])
            raise ValueError(f"action bounds: low[{bad}]={self.low[bad]:g} > high[{bad}]={self.high[bad]:g}")
        self.clip = clip
        self.source = source  # where the bounds came from, for logs and notes
        self.trips = dict.fromkeys(REASONS, 0)  # how often each check refused a chunk
        self.clipped = 0  # chunks clipped (clip=True)

    def _bound(self, name: str, value: Sequence[float] | np.ndarray | None) -> np.ndarray | None:
        if value is None:
            return None
        array = np.asarray(value, dtype=np.float64).reshape(-1)
        if array.size == 1:
            array = np.full(self.action_dim, float(array[0]))
        if array.shape != (self.action_dim,):
            raise ValueError(f"action bound {name!r} has {array.size} values, the policy's action has {self.action_dim}")
        if np.isnan(array).any():
            raise ValueError(f"action bound {name!r} contains NaN")
        return array

    @classmethod
    def from_stats(cls, stats: dict[str, Any], action_dim: int, margin: float = 0.1, clip: bool = False) -> ActionGuard:
        """Bounds ``[min - margin·(max-min), max + margin·(max-min)]`` from dataset stats of ``action``;
        finiteness only (logged) when the stats have no ``min``/``max``."""
        if margin < 0:
            raise ValueError(f"--runtime.bounds_margin must be >= 0, got {margin}")
        if "min" not in stats or "max" not in stats:
            logger.warning("action guard: the checkpoint's action stats have no min/max (%s): checking finiteness only", sorted(stats))
            return cls(action_dim, clip=clip, source="none (stats lack min/max)")
        low = np.asarray(_numpy(stats["min"]), np.float64).reshape(-1)
        high = np.asarray(_numpy(stats["max"]), np.float64).reshape(-1)
        span = high - low
        return cls(action_dim, low - margin * span, high + margin * span, clip=clip, source=f"dataset stats min/max ± {margin:g}·range")

    @property
    def has_bounds(self) -> bool:
        return self.low is not None or self.high is not None

    def describe(self) -> str:
        if not self.has_bounds:
            return "action guard: finite values only (no bounds)"
        fmt = lambda a: "none" if a is None else "[" + ", ".join(f"{v:.3g}" for v in a) + "]"  # noqa: E731
        return f"action guard: finite, low={fmt(self.low)}, high={fmt(self.high)} ({self.source}; {'clip' if self.clip else 'refuse'} outside)"

    def check(self, chunk: np.ndarray) -> np.ndarray:
        """``chunk`` as float32 ``(T, action_dim)`` if safe (clipped when ``clip``); raises :class:`UnsafeActionError`."""
        chunk = np.asarray(chunk)
        if chunk.ndim != 2 or chunk.shape[0] < 1 or chunk.shape[1] != self.action_dim:
            self.trips["bad_shape"] += 1
            raise UnsafeActionError("bad_shape", f"action chunk has shape {tuple(chunk.shape)}, expected (T >= 1, {self.action_dim})")
        if not np.issubdtype(chunk.dtype, np.floating) and not np.issubdtype(chunk.dtype, np.integer):
            self.trips["bad_shape"] += 1
            raise UnsafeActionError("bad_shape", f"action chunk has dtype {chunk.dtype}, expected a real number type")
        chunk = chunk.astype(np.float32, copy=False)
        finite = np.isfinite(chunk)
        if not finite.all():
            self.trips["non_finite"] += 1
            t, d = np.argwhere(~finite)[0]
            raise UnsafeActionError(
                "non_finite", f"action chunk has {int((~finite).sum())} of {chunk.size} values NaN/inf (first at step {t}, dim {d}: {chunk[t, d]})"
            )
        if not self.has_bounds:
            return chunk
        low = -np.inf if self.low is None else self.low
        high = np.inf if self.high is None else self.high
        outside = (chunk < low) | (chunk > high)
        if outside.any():
            if self.clip:
                self.clipped += 1
                return np.clip(chunk, low, high).astype(np.float32)
            self.trips["out_of_bounds"] += 1
            t, d = np.argwhere(outside)[0]
            lo = -np.inf if self.low is None else self.low[d]
            hi = np.inf if self.high is None else self.high[d]
            raise UnsafeActionError(
                "out_of_bounds",
                f"action chunk has {int(outside.sum())} of {chunk.size} values outside the bounds (first at step {t}, dim {d}: "
                f"{chunk[t, d]:.4g} not in [{lo:.4g}, {hi:.4g}], {self.source})",
            )
        return chunk


def check_finite_chunk(chunk: np.ndarray, action_dim: int | None = None) -> np.ndarray:
    """The guard's shape and finiteness checks without bounds (for callers that have no stats)."""
    chunk = np.asarray(chunk)
    dim = action_dim if action_dim is not None else (chunk.shape[-1] if chunk.ndim == 2 and chunk.shape[-1] > 0 else 1)
    return ActionGuard(dim).check(chunk)


def _numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # torch tensor
        return value.detach().float().cpu().numpy()
    return np.asarray(value)


__all__ = ["REASONS", "ActionGuard", "UnsafeActionError", "check_finite_chunk"]
