"""Action-chunk scheduling at a target control rate.

A policy predicts a chunk ``A^(s) = (a^(s)_s, a^(s)_{s+1}, …)`` of actions from the
observation taken at control step ``s``. Chunks arrive late (inference latency) and overlap;
a scheduler turns them into one action per control step.

- :class:`TemporalEnsembler` — ACT's temporal ensembling (Zhao et al. 2023, Alg. 2)
  on a timeline: for step ``t`` with chunks ``j = 0 (oldest) … n-1`` covering it,
  ``a_t = Σ_j w_j a^(j)_t / Σ_j w_j`` with ``w_j = exp(-m·j)``. When a chunk is predicted
  every step this is exactly ``lerobot.policies.act.modeling_act.ACTTemporalEnsembler``.
- :class:`ChunkBlender` — the newest chunk takes over; across the first ``K`` steps of the
  switch, ``a_t = (1-α_k) a^old_t + α_k a^new_t`` with ``α_k = (k+1)/(K+1)``, so the
  commanded trajectory has no jump when consecutive chunks disagree.

:class:`ControlLoop` ticks at ``fps``, sends one action per tick, and runs inference in a
background thread so a slow model never stalls the robot; the actions of a chunk that
belong to steps already past when it arrives are dropped.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


class ActionScheduler(Protocol):
    def add_chunk(self, chunk: np.ndarray, start_step: int, current_step: int) -> None:
        """``chunk[k]`` is the action for step ``start_step + k``; ``current_step`` is the next step to act on."""

    def action(self, step: int) -> np.ndarray | None:
        """The action for ``step``, or None when no chunk covers it."""

    def reset(self) -> None: ...


class TemporalEnsembler:
    """ACT temporal ensembling over every chunk that covers a step (``w_j = exp(-m·j)``, j=0 oldest)."""

    def __init__(self, coeff: float = 0.01) -> None:
        self.coeff = coeff
        self.reset()

    def reset(self) -> None:
        self._chunks: list[tuple[int, np.ndarray]] = []  # (start_step, chunk), oldest first

    def add_chunk(self, chunk: np.ndarray, start_step: int, current_step: int) -> None:
        self._chunks.append((start_step, np.asarray(chunk, dtype=np.float64)))
        self._chunks.sort(key=lambda item: item[0])  # age = observation time, even if chunks arrive out of order
        self._chunks = [(s, c) for s, c in self._chunks if s + len(c) > current_step]

    def weights(self, n: int) -> np.ndarray:
        w = np.exp(-self.coeff * np.arange(n))
        return w / w.sum()

    def action(self, step: int) -> np.ndarray | None:
        covering = [c[step - s] for s, c in self._chunks if s <= step < s + len(c)]
        if not covering:
            return None
        return (self.weights(len(covering))[:, None] * np.stack(covering)).sum(0).astype(np.float32)


class ChunkBlender:
    """Newest chunk wins, cross-faded linearly over ``blend_steps`` steps from the current plan."""

    def __init__(self, blend_steps: int = 4) -> None:
        if blend_steps < 0:
            raise ValueError(f"blend_steps must be >= 0, got {blend_steps}")
        self.blend_steps = blend_steps
        self.reset()

    def reset(self) -> None:
        self._plan_start = 0
        self._plan: np.ndarray | None = None  # actions for steps _plan_start, _plan_start + 1, ...

    def action(self, step: int) -> np.ndarray | None:
        if self._plan is None or not self._plan_start <= step < self._plan_start + len(self._plan):
            return None
        return self._plan[step - self._plan_start].astype(np.float32)

    def add_chunk(self, chunk: np.ndarray, start_step: int, current_step: int) -> None:
        chunk = np.asarray(chunk, dtype=np.float64)
        first = max(start_step, current_step)  # actions for steps already past are stale
        new = chunk[first - start_step :]
        if len(new) == 0:
            return
        plan = new.copy()
        for k in range(min(self.blend_steps, len(new))):
            old = self.action(first + k)
            if old is None:
                break
            alpha = (k + 1) / (self.blend_steps + 1)
            plan[k] = (1 - alpha) * old + alpha * new[k]
        self._plan_start, self._plan = first, plan


def make_scheduler(kind: str, ensemble_coeff: float = 0.01, blend_steps: int = 4) -> ActionScheduler:
    if kind == "ensemble":
        return TemporalEnsembler(ensemble_coeff)
    if kind == "blend":
        return ChunkBlender(blend_steps)
    raise ValueError(f"scheduler={kind!r}: expected 'ensemble' or 'blend'")


@dataclass
class ControlConfig:
    fps: float = 30.0  # target control rate; 0 = as fast as possible
    scheduler: str = "ensemble"  # ensemble | blend
    ensemble_coeff: float = 0.01  # ACT's default m
    blend_steps: int = 4
    replan_every: int = 1  # ask for a new chunk every k steps (when none is in flight)
    horizon: int | None = None  # use only the first `horizon` actions of each chunk
    blocking: bool = False  # wait for each new chunk before acting (synchronous control)


@dataclass
class ControlStats:
    steps: int = 0
    duration_s: float = 0.0
    chunks: int = 0
    starved_steps: int = 0  # ticks with no scheduled action: the previous action was held
    late_ticks: int = 0  # ticks that started more than one period after their deadline
    inference_ms: list[float] = field(default_factory=list)

    @property
    def achieved_hz(self) -> float:
        return self.steps / self.duration_s if self.duration_s > 0 else math.inf


class ControlLoop:
    """Send one action per tick at ``config.fps`` from chunks predicted in a background thread."""

    def __init__(
        self,
        predict_chunk: Callable[[Any], np.ndarray],
        get_observation: Callable[[], Any],
        send_action: Callable[[np.ndarray], None],
        config: ControlConfig | None = None,
    ) -> None:
        self.config = config or ControlConfig()
        if self.config.replan_every < 1:
            raise ValueError(f"replan_every must be >= 1, got {self.config.replan_every}")
        self.predict_chunk = predict_chunk
        self.get_observation = get_observation
        self.send_action = send_action
        self.scheduler = make_scheduler(self.config.scheduler, self.config.ensemble_coeff, self.config.blend_steps)

    def _timed_predict(self, observation: Any) -> tuple[np.ndarray, float]:
        start = time.perf_counter()
        chunk = np.asarray(self.predict_chunk(observation))
        if self.config.horizon is not None:
            chunk = chunk[: self.config.horizon]
        return chunk, (time.perf_counter() - start) * 1e3

    def run(self, num_steps: int) -> ControlStats:
        """Run ``num_steps`` control ticks (the first waits for the first chunk)."""
        self.scheduler.reset()
        stats = ControlStats()
        period = 1.0 / self.config.fps if self.config.fps > 0 else 0.0
        pending: tuple[Future, int] | None = None
        last_request, last_action = -math.inf, None
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="policy") as executor:

            def collect(step: int) -> None:
                nonlocal pending
                future, obs_step = pending
                chunk, ms = future.result()  # re-raises inference errors: never act on a failed prediction
                self.scheduler.add_chunk(chunk, obs_step, step)
                stats.chunks += 1
                stats.inference_ms.append(ms)
                pending = None

            start = time.perf_counter()
            for step in range(num_steps):
                deadline = start + step * period
                now = time.perf_counter()
                if now < deadline:
                    time.sleep(deadline - now)
                elif period and now - deadline > period:
                    stats.late_ticks += 1
                if pending is not None and pending[0].done():
                    collect(step)
                if pending is None and step - last_request >= self.config.replan_every:
                    pending = (executor.submit(self._timed_predict, self.get_observation()), step)
                    last_request = step
                    if self.config.blocking or step == 0:
                        pending[0].result()
                        collect(step)
                action = self.scheduler.action(step)
                if action is None:
                    stats.starved_steps += 1
                    action = last_action
                self.send_action(action)
                last_action = action
            stats.steps = num_steps
            stats.duration_s = time.perf_counter() - start
            if pending is not None:
                pending[0].result()
        return stats
