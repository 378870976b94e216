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

The loop is fail-safe: a stale or failed observation, an inference error or timeout, a chunk
the :class:`~vla_dino.runtime.guard.ActionGuard` refuses (NaN/inf, out of bounds, wrong shape)
and a missed tick deadline are :class:`Fault` s. While a fault is active the loop calls
``on_fault(fault, step)`` every tick and sends what it returns (default
:func:`hold_last_safe`: the last action that passed the guard; ``None`` sends nothing), keeps
asking for a fresh chunk, and resumes when one arrives (for a missed deadline: at the next
on-time tick). A fault that lasts longer than ``fault_grace_s`` stops the loop: ``on_stop(fault)``
is called once and :attr:`ControlStats.stopped_by` says why. Every fault is logged and kept in
:attr:`ControlStats.faults`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from vla_dino.runtime.guard import ActionGuard, UnsafeActionError

logger = logging.getLogger(__name__)


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


FAULT_REASONS = (
    "stale_observation",  # get_observation raised a TimeoutError (cameras.StaleFrameError: frozen / stalled camera)
    "observation_error",  # get_observation raised anything else (dead camera, robot state read failed)
    "inference_error",  # predict_chunk raised
    "inference_timeout",  # no chunk within inference_timeout_s
    "unsafe_action",  # the chunk failed the action guard (NaN/inf, out of bounds, wrong shape)
    "deadline_miss",  # a tick started more than deadline_miss_s after its deadline
    "no_action",  # nothing to send: no chunk has ever been accepted
    "send_error",  # send_action raised: the loop stops at once (it cannot even hold)
)
# Faults after which the current plan is dropped and only a chunk observed after the fault is trusted.
PLAN_FAULTS = frozenset({"stale_observation", "observation_error", "inference_error", "inference_timeout", "unsafe_action", "no_action"})


@dataclass(frozen=True)
class Fault:
    reason: str  # one of FAULT_REASONS
    step: int  # control step at which it was detected
    time_s: float  # seconds since the start of the run
    message: str
    error: BaseException | None = None
    last_safe_action: np.ndarray | None = None  # the last action sent that passed the guard

    def __str__(self) -> str:
        return f"{self.reason} at step {self.step} ({self.time_s:.3f} s): {self.message}"


FaultHandler = Callable[[Fault, int], "np.ndarray | None"]


def hold_last_safe(fault: Fault, step: int) -> np.ndarray | None:
    """Default ``on_fault``: repeat the last action that passed the guard (nothing before the first one).

    Right for position targets (the arm stays where it is). For velocity or torque commands pass an
    ``on_fault`` that returns the robot's zero/brake command instead."""
    return fault.last_safe_action


@dataclass
class ControlConfig:
    fps: float = 30.0  # target control rate; 0 = as fast as possible (no deadlines)
    scheduler: str = "ensemble"  # ensemble | blend
    ensemble_coeff: float = 0.01  # ACT's default m
    blend_steps: int = 4
    replan_every: int = 1  # ask for a new chunk every k steps (when none is in flight)
    horizon: int | None = None  # use only the first `horizon` actions of each chunk (>= 1)
    blocking: bool = False  # wait for each new chunk before acting (synchronous control)
    inference_timeout_s: float = 1.0  # a chunk not back within this is a fault (the call keeps running)
    deadline_miss_s: float | None = None  # tick lateness that counts as a fault; None = one period (fps > 0 only)
    fault_grace_s: float = 0.5  # a fault lasting longer than this stops the loop; 0 = stop at the first fault

    def __post_init__(self) -> None:
        checks = [
            (math.isfinite(self.fps) and self.fps >= 0, f"fps must be a finite number >= 0, got {self.fps}"),
            (self.replan_every >= 1, f"replan_every must be >= 1, got {self.replan_every}"),
            (self.horizon is None or self.horizon >= 1, f"horizon must be >= 1 or None, got {self.horizon}"),
            (self.blend_steps >= 0, f"blend_steps must be >= 0, got {self.blend_steps}"),
            (self.inference_timeout_s > 0, f"inference_timeout_s must be > 0, got {self.inference_timeout_s}"),
            (self.deadline_miss_s is None or self.deadline_miss_s > 0, f"deadline_miss_s must be > 0 or None, got {self.deadline_miss_s}"),
            (self.fault_grace_s >= 0, f"fault_grace_s must be >= 0, got {self.fault_grace_s}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"ControlConfig: {message}")
        if self.scheduler not in ("ensemble", "blend"):
            raise ValueError(f"ControlConfig: scheduler={self.scheduler!r}: expected 'ensemble' or 'blend'")


@dataclass
class ControlStats:
    steps: int = 0  # ticks run (fewer than asked when the loop stopped on a fault)
    duration_s: float = 0.0
    chunks: int = 0  # chunks accepted
    starved_steps: int = 0  # ticks with no scheduled action: the previous action was held
    late_ticks: int = 0  # ticks that started more than one period after their deadline
    fault_ticks: int = 0  # ticks sent under a fault (on_fault's action)
    inference_ms: list[float] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)  # each detected fault, in order
    stopped_by: Fault | None = None  # the fault that stopped the loop (None: ran all steps)

    @property
    def achieved_hz(self) -> float:
        return self.steps / self.duration_s if self.duration_s > 0 else math.inf

    def fault_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for fault in self.faults:
            counts[fault.reason] = counts.get(fault.reason, 0) + 1
        return counts


@dataclass
class _Pending:
    future: Future
    obs_step: int
    submitted: float
    timed_out: bool = False


class ControlLoop:
    """Send one action per tick at ``config.fps`` from chunks predicted in a background thread, fail-safe.

    ``action_guard`` checks every chunk (default: finite values and a consistent ``(T, action_dim)``
    shape; pass ``ActionGuard(dim, low, high)`` for bounds). ``on_fault(fault, step)`` gives the action
    to send on each tick under a fault (default :func:`hold_last_safe`); ``on_stop(fault)`` runs once
    when a fault outlasts ``config.fault_grace_s`` (bring the robot to a safe stop there)."""

    def __init__(
        self,
        predict_chunk: Callable[[Any], np.ndarray],
        get_observation: Callable[[], Any],
        send_action: Callable[[np.ndarray], None],
        config: ControlConfig | None = None,
        on_fault: FaultHandler | None = None,
        on_stop: Callable[[Fault], None] | None = None,
        action_guard: ActionGuard | None = None,
    ) -> None:
        self.config = config or ControlConfig()
        self.predict_chunk = predict_chunk
        self.get_observation = get_observation
        self.send_action = send_action
        self.on_fault = on_fault or hold_last_safe
        self.on_stop = on_stop
        self.action_guard = action_guard
        self._shape_guard: ActionGuard | None = None
        self.scheduler = make_scheduler(self.config.scheduler, self.config.ensemble_coeff, self.config.blend_steps)

    def _timed_predict(self, observation: Any) -> tuple[np.ndarray, float]:
        start = time.perf_counter()
        chunk = self.predict_chunk(observation)
        return chunk, (time.perf_counter() - start) * 1e3

    def _check_chunk(self, chunk: Any) -> np.ndarray:
        """Guard, then truncate to ``horizon``; without a guard the first accepted chunk fixes ``action_dim``."""
        guard = self.action_guard or self._shape_guard
        if guard is None:
            array = np.asarray(chunk)
            dim = array.shape[1] if array.ndim == 2 and array.shape[1] > 0 else 1
            guard = ActionGuard(int(dim), source="the first accepted chunk's shape")
            checked = guard.check(array)
            self._shape_guard = guard  # only once a chunk passed: a malformed first chunk fixes nothing
        else:
            checked = guard.check(chunk)
        return checked[: self.config.horizon] if self.config.horizon is not None else checked

    def run(self, num_steps: int) -> ControlStats:
        """Run up to ``num_steps`` control ticks (the first waits up to ``inference_timeout_s`` for the first chunk)."""
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 0:
            raise ValueError(f"num_steps must be an int >= 0, got {num_steps!r}")
        config = self.config
        self.scheduler.reset()
        stats = ControlStats()
        period = 1.0 / config.fps if config.fps > 0 else 0.0
        miss_after = (config.deadline_miss_s if config.deadline_miss_s is not None else period) if period else math.inf
        pending: _Pending | None = None
        last_request, last_action, last_safe = -math.inf, None, None
        # Faults in force: a plan fault clears when a chunk observed after it is accepted, a timing fault at the
        # next on-time tick. The grace period runs from the onset of the first of an unbroken run of faults.
        plan_fault: Fault | None = None
        timing_fault: Fault | None = None
        fault_since = math.inf
        trust_from = 0  # only chunks observed at or after this step are used (raised by plan faults)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="policy")
        start = anchor = time.perf_counter()  # run start; tick deadlines count from `anchor` (reset once step 0 acts)

        def fault(reason: str, step: int, message: str, error: BaseException | None = None) -> None:
            nonlocal plan_fault, timing_fault, trust_from, fault_since
            record = Fault(reason, step, time.perf_counter() - start, message, error, last_safe)
            stats.faults.append(record)
            logger.warning("control loop fault: %s", record)
            if plan_fault is None and timing_fault is None:
                fault_since = record.time_s
            if reason in PLAN_FAULTS:
                trust_from = step
                self.scheduler.reset()  # open-loop plans from before the fault are not trusted
                plan_fault = plan_fault or record
            else:
                timing_fault = timing_fault or record

        def clear(kind: str, step: int) -> None:
            nonlocal plan_fault, timing_fault, fault_since
            cleared = plan_fault if kind == "plan" else timing_fault
            if cleared is None:
                return
            if kind == "plan":
                plan_fault = None
            else:
                timing_fault = None
            if plan_fault is None and timing_fault is None:
                fault_since = math.inf
                logger.warning("control loop: recovered at step %d from %s", step, cleared)

        def collect(step: int) -> None:
            nonlocal pending
            done, pending = pending, None
            try:
                chunk, ms = done.future.result()
            except Exception as error:  # never act on a failed prediction
                fault("inference_error", step, f"predict_chunk raised {type(error).__name__}: {error}", error)
                return
            if done.obs_step < trust_from:
                return  # observed before the current fault (e.g. the answer to a timed-out call): too old to trust
            try:
                chunk = self._check_chunk(chunk)
            except UnsafeActionError as error:
                fault("unsafe_action", step, f"{error.reason}: {error}", error)
                return
            self.scheduler.add_chunk(chunk, done.obs_step, step)
            stats.chunks += 1
            stats.inference_ms.append(ms)
            clear("plan", step)

        def request(step: int) -> None:
            nonlocal pending, last_request
            last_request = step
            try:
                observation = self.get_observation()
            except TimeoutError as error:  # cameras.StaleFrameError: no fresh frame in time
                fault("stale_observation", step, f"{type(error).__name__}: {error}", error)
                return
            except Exception as error:
                fault("observation_error", step, f"get_observation raised {type(error).__name__}: {error}", error)
                return
            pending = _Pending(executor.submit(self._timed_predict, observation), step, time.perf_counter())

        def wait(step: int) -> None:
            try:
                pending.future.result(timeout=max(config.inference_timeout_s - (time.perf_counter() - pending.submitted), 0))
            except Exception:  # a timeout is detected below, an inference error by collect()
                pass
            if pending.future.done():
                collect(step)

        def fault_action(fault_record: Fault, step: int) -> np.ndarray | None:
            """``on_fault``'s action if it is one the robot can take, else nothing (logged)."""
            try:
                action = self.on_fault(fault_record, step)
            except Exception as error:
                logger.error("control loop: on_fault raised %s: %s; sending nothing", type(error).__name__, error)
                return None
            if action is None:
                return None
            action = np.asarray(action, dtype=np.float32)
            expected = None if last_safe is None else last_safe.shape
            if (expected is not None and action.shape != expected) or action.ndim != 1 or not np.isfinite(action).all():
                logger.error("control loop: on_fault returned shape %s (expected %s) or non-finite values; sending nothing", action.shape, expected)
                return None
            return action

        try:
            for step in range(num_steps):
                deadline = anchor + step * period
                now = time.perf_counter()
                if now < deadline:
                    time.sleep(deadline - now)
                    now = time.perf_counter()
                elif period and now - deadline > period:
                    stats.late_ticks += 1
                if period and now - deadline > miss_after:
                    fault("deadline_miss", step, f"tick started {1e3 * (now - deadline):.1f} ms after its deadline (limit {1e3 * miss_after:.1f} ms)")
                else:
                    clear("timing", step)
                if pending is not None and pending.future.done():
                    collect(step)
                if pending is not None and not pending.timed_out and time.perf_counter() - pending.submitted > config.inference_timeout_s:
                    pending.timed_out = True  # the call cannot be cancelled; a new one starts when it returns
                    fault("inference_timeout", step, f"no chunk within {config.inference_timeout_s} s (observed at step {pending.obs_step})")
                if pending is None and (step - last_request >= config.replan_every or plan_fault is not None):
                    request(step)
                    if pending is not None and (config.blocking or stats.chunks == 0):
                        wait(step)
                        if pending is not None and config.blocking:
                            pending.timed_out = True
                            fault("inference_timeout", step, f"no chunk within {config.inference_timeout_s} s (blocking)")
                if step == 0:
                    anchor = time.perf_counter()  # waiting for the first chunk is not a missed deadline

                action = None
                if plan_fault is None and timing_fault is None:
                    action = self.scheduler.action(step)
                    if action is None and last_action is not None:
                        stats.starved_steps += 1
                        action = last_action
                    elif action is None:
                        fault("no_action", step, "no chunk accepted yet: nothing to send")
                active = plan_fault or timing_fault
                if active is not None:
                    if time.perf_counter() - start - fault_since > config.fault_grace_s:
                        stats.stopped_by = active
                        break
                    action = fault_action(active, step)
                    stats.fault_ticks += 1
                if action is not None:
                    try:
                        self.send_action(action)
                    except Exception as error:
                        fault("send_error", step, f"send_action raised {type(error).__name__}: {error}", error)
                        stats.stopped_by = stats.faults[-1]
                        break
                    last_action = action
                    if active is None:
                        last_safe = action
                stats.steps = step + 1
        finally:
            stats.duration_s = time.perf_counter() - start
            if pending is not None:  # let a running call finish (bounded); never block on a hung one
                try:
                    pending.future.result(timeout=0 if pending.timed_out else config.inference_timeout_s)
                except Exception:
                    pass
            executor.shutdown(wait=False, cancel_futures=True)
        if stats.stopped_by is not None:
            logger.error("control loop stopped at step %d: %s", stats.steps, stats.stopped_by)
            if self.on_stop is not None:
                self.on_stop(stats.stopped_by)
        return stats
