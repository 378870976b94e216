"""Low-latency batch-1 inference for any LeRobot ``PreTrainedPolicy`` checkpoint.

``PolicyRuntime`` loads a checkpoint folder with :func:`vla_dino.runtime.loading.load_policy` (the way
``lerobot-rollout`` does). Per call it

1. copies the raw observation into preallocated (pinned, on CUDA) host buffers and issues
   non-blocking copies into preallocated device buffers (images travel as uint8: 4× fewer
   bytes than float32);
2. converts images to float in [0, 1], CHW, batch 1 on the device — the same arithmetic as
   ``lerobot.policies.utils.prepare_observation_for_inference``;
3. runs the checkpoint's preprocessor, ``policy.predict_action_chunk`` (under bf16/fp16
   autocast, optionally ``torch.compile``-d, optionally replayed from a CUDA graph) and the
   postprocessor (kept on the device), then one copy of the chunk back to pinned host memory.

At load, the vision towers' attention layers get fused q/k/v projections (``RuntimeConfig.fuse_qkv``,
:func:`vla_dino.adapter.inference.fuse_qkv`); the policy is modified in place and frozen.

Options that need CUDA (pinned memory, CUDA graphs) are skipped on other devices with a
logged note. A captured CUDA graph (:mod:`vla_dino.runtime.graphs`) covers either the whole device
pipeline or the policy forward only; it is checked against an eager call before it is used and
dropped (with a warning) when it disagrees.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lerobot.policies.pretrained import PreTrainedPolicy

from vla_dino.adapter.inference import channels_last_patch_embeddings, float8_linears, fuse_qkv, unfused_attention
from vla_dino.adapter.towers import Tower
from vla_dino.device import COMPILE_MODES, PRECISIONS, autocast, resolve_device, resolve_dtype
from vla_dino.runtime.graphs import CapturedGraph
from vla_dino.runtime.guard import ActionGuard
from vla_dino.runtime.loading import load_policy
from vla_dino.runtime.spec import ArraySpec, PolicySpec

logger = logging.getLogger(__name__)

# Graph replay vs eager: same kernels, but capture may select other cuBLAS algorithms.
GRAPH_CHECK_TOLERANCE = {"fp32": 1e-4, "bf16": 2e-2, "fp16": 1e-2}
PROFILE_STAGES = ("upload", "preprocess", "policy", "postprocess", "download")
ACTION_BOUNDS = ("stats", "none")


@dataclass
class RuntimeConfig:
    """How to run the policy (CLI-facing through ``vla_dino.runtime.serve``)."""

    device: str = "auto"  # "auto": cuda when available, else cpu
    dtype: str = "auto"  # fp32 | bf16 | fp16 | auto (vla_dino.device.resolve_dtype); autocast, weights stay fp32
    cast_weights: bool = False  # store weights in the autocast dtype: no per-call fp32 -> bf16 weight casts
    # One q/k/v matmul + SDPA per attention layer of the vision towers (vla_dino.adapter.inference.fuse_qkv);
    # same results up to float rounding. Freezes the policy (requires_grad False): the runtime never trains.
    fuse_qkv: bool = True
    channels_last: bool = False  # patch-embedding convs in channels-last memory format (same results)
    # The vision towers' Linears with float8 e4m3 weights and per-call activation scales (torch._scaled_mm; fp8 tensor
    # cores need compute capability >= 8.9: Ada, Hopper). Changes the actions slightly: bench_runtime_latency.py
    # prints the error against bf16.
    fp8_towers: bool = False
    compile: bool = False  # torch.compile(policy.predict_action_chunk)
    # "default" compiles a large policy in about a minute; "max-autotune*" benchmarks kernels (many minutes);
    # "reduce-overhead" uses torch's own CUDA graphs instead of ours.
    compile_mode: str = "default"
    compile_backend: str = "inductor"
    cuda_graphs: bool = True  # replay the forward from a CUDA graph (CUDA only)
    capture_processors: bool = True  # try to put the pre/post processors in the graph too
    warmup_iters: int = 3
    # Action guard (vla_dino.runtime.guard): chunks with NaN/inf are always refused. Bounds: explicit
    # action_low/action_high (joint or workspace limits: what a real robot should use) win; otherwise
    # "stats" = the checkpoint's dataset min/max widened by bounds_margin x range per side; "none" = finite only.
    action_bounds: str = "stats"
    bounds_margin: float = 0.1
    action_low: list[float] | None = None  # one value per action dimension (or one for all)
    action_high: list[float] | None = None
    clip_actions: bool = False  # clip out-of-bounds chunks instead of refusing them

    def __post_init__(self) -> None:
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"--runtime.compile_mode={self.compile_mode!r}: expected one of {list(COMPILE_MODES)}")
        if self.action_bounds not in ACTION_BOUNDS:
            raise ValueError(f"--runtime.action_bounds={self.action_bounds!r}: expected one of {list(ACTION_BOUNDS)}")
        if not self.bounds_margin >= 0:
            raise ValueError(f"--runtime.bounds_margin={self.bounds_margin}: must be >= 0")

    def resolved_device(self) -> torch.device:
        return resolve_device(self.device, flag="--runtime.device")

    def resolved_dtype(self, device: torch.device) -> str:
        return resolve_dtype(self.dtype, device, flag="--runtime.dtype")


@dataclass(frozen=True)
class _Segment:
    """The part of the pipeline a CUDA graph may replace: ``finish(run(inputs(task)))`` is the chunk
    (T, action_dim) float32 on the device, computed from the static device buffers."""

    what: str  # for notes and warnings
    inputs: Callable[[str | None], dict]
    run: Callable[[dict], torch.Tensor]
    finish: Callable[[torch.Tensor], torch.Tensor]


class PolicyRuntime:
    """Warm, batch-1 inference of a LeRobot policy: ``predict_chunk(observation) -> (T, action_dim)``."""

    def __init__(
        self,
        policy: PreTrainedPolicy,
        preprocessor: Callable[[dict], dict],
        postprocessor: Callable[[torch.Tensor], torch.Tensor],
        config: RuntimeConfig | None = None,
        guard: ActionGuard | None = None,
    ) -> None:
        self.config = config or RuntimeConfig()
        self.device = self.config.resolved_device()
        self.dtype = self.config.resolved_dtype(self.device)
        n_obs_steps = getattr(policy.config, "n_obs_steps", 1)
        if n_obs_steps != 1:
            raise ValueError(
                f"policy type '{policy.config.type}' has n_obs_steps={n_obs_steps}: the runtime feeds one "
                "observation per call; use lerobot-rollout for policies with observation history"
            )
        self.policy = policy.to(self.device).eval()
        self.preprocessor = preprocessor
        self.postprocessor = postprocessor
        self._lock = threading.Lock()
        # What a CUDA graph may replace: the policy forward, or (_try_capture) the whole device pipeline.
        self._segment = _Segment(
            "policy", lambda task: self.preprocessor(self._prepare(task)), self._policy_call,
            lambda actions: self.postprocessor(actions)[0].float(),
        )
        self._graph: CapturedGraph | None = None  # replaces self._segment.run when its inputs match
        self._graph_misses = 0
        self._copied: torch.cuda.Event | None = None  # last host->device copy, before the host buffers are reused
        self.notes: list[str] = []  # what was enabled / skipped, for logs and benchmark tables

        self._rewrite_towers()
        if self.config.cast_weights and self.dtype != "fp32":
            # Autocast would cast every fp32 weight to the compute dtype on every call (for a 776M-parameter
            # policy ~4.7 GB of memory traffic); matmuls see the same rounded weights either way.
            self.policy.to(PRECISIONS[self.dtype])
            self._note(f"weights stored in {self.dtype}")
        if self.config.fp8_towers:  # after the cast: .to(dtype) would turn float8 weights back into dtype
            self._quantise_towers()
        self._predict: Callable[[dict], torch.Tensor] = policy.predict_action_chunk
        if self.config.compile:
            self._predict = torch.compile(
                policy.predict_action_chunk, mode=self.config.compile_mode, backend=self.config.compile_backend
            )
            self._note(f"torch.compile on (backend={self.config.compile_backend}, mode={self.config.compile_mode})")
        self._note(f"device={self.device}, autocast dtype={self.dtype}")

        pin = self.device.type == "cuda"
        if not pin:
            self._note("pinned host buffers skipped: device is not CUDA")
        self._inputs = PolicySpec.from_config(policy.config, chunk_size=0).inputs
        self._host = {s.name: torch.empty(s.shape, dtype=_torch_dtype(s), pin_memory=pin) for s in self._inputs}
        # Static device inputs: every call copies into these, so a CUDA graph can read them.
        self._dev = {
            s.name: (torch.empty(s.shape, dtype=_torch_dtype(s), device=self.device) if pin else self._host[s.name])
            for s in self._inputs
        }
        observation = self._synthetic_observation(self._inputs)
        start = time.perf_counter()
        chunk_size, action_dim = self._chunk_shape(observation)
        self.spec = PolicySpec.from_config(policy.config, chunk_size=chunk_size)
        self._out = torch.empty((chunk_size, action_dim), dtype=torch.float32, pin_memory=pin)
        self._warmup(observation, start)
        self.guard = guard or self._make_guard()
        self._note(self.guard.describe())

    @classmethod
    def from_pretrained(cls, path: str | Path, config: RuntimeConfig | None = None) -> PolicyRuntime:
        config = config or RuntimeConfig()
        policy, preprocessor, postprocessor = load_policy(path, config.resolved_device())
        return cls(policy, preprocessor, postprocessor, config)

    # ------------------------------------------------------------------ public API

    def predict_chunk(self, observation: Mapping[str, np.ndarray], task: str | None = None) -> np.ndarray:
        """One action chunk ``(T, action_dim)`` float32 for a raw observation (uint8 HWC images, float32 vectors).

        Raises :class:`~vla_dino.runtime.spec.ObservationError` for a malformed observation and
        :class:`~vla_dino.runtime.guard.UnsafeActionError` when the chunk is non-finite or out of bounds."""
        self.spec.validate(observation)
        with self._lock:
            chunk = self._run(observation, task)
        return self.guard.check(chunk)

    def reset(self) -> None:
        """Start of an episode: reset the policy's own state (queues, ensemblers)."""
        self.policy.reset()

    @torch.inference_mode()
    def profile(self, observation: Mapping[str, np.ndarray], iters: int = 10) -> dict[str, float]:
        """Mean wall time (ms) of each eager stage (``PROFILE_STAGES``, the device synchronised after each),
        their sum ``eager``, the CUDA graph replay alone (``graph``, when one is in use) and ``end_to_end``
        as ``predict_chunk`` runs it."""
        self.spec.validate(observation)
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        stages: dict[str, Callable[[Any], Any]] = {
            "upload": lambda _: self._upload(observation),
            "preprocess": lambda _: self.preprocessor(self._prepare(None)),
            "policy": self._policy_call,
            "postprocess": lambda actions: self.postprocessor(actions)[0].float(),
            "download": self._download,
        }
        totals = dict.fromkeys([*PROFILE_STAGES, "graph", "end_to_end"], 0.0)
        with self._lock:
            for _ in range(iters):
                value: Any = None
                for name in PROFILE_STAGES:
                    start = time.perf_counter()
                    value = stages[name](value)
                    sync()
                    totals[name] += time.perf_counter() - start
                if self._graph is not None:
                    inputs = self._segment.inputs(None)
                    sync()
                    start = time.perf_counter()
                    self._graph(inputs)
                    sync()
                    totals["graph"] += time.perf_counter() - start
                start = time.perf_counter()
                self._run(observation, None)
                totals["end_to_end"] += time.perf_counter() - start
        result = {name: total * 1e3 / iters for name, total in totals.items()}
        result["eager"] = sum(result[name] for name in PROFILE_STAGES)
        if self._graph is None:
            del result["graph"]
        return result

    # ------------------------------------------------------------------ internals

    def _make_guard(self) -> ActionGuard:
        config, dim = self.config, self.spec.action_dim
        if config.action_low is not None or config.action_high is not None:
            return ActionGuard(dim, config.action_low, config.action_high, clip=config.clip_actions, source="--runtime.action_low/high")
        if config.action_bounds == "none":
            return ActionGuard(dim, source="--runtime.action_bounds=none")
        stats = _action_stats(self.postprocessor)
        if stats is None:
            logger.warning("runtime: the postprocessor has no 'action' statistics; the action guard checks finiteness only")
            return ActionGuard(dim, source="none (no action stats in the checkpoint)")
        return ActionGuard.from_stats(stats, dim, margin=config.bounds_margin, clip=config.clip_actions)

    def _rewrite_towers(self) -> None:
        """The inference-only tower rewrites of `vla_dino.adapter.inference`, in fp32 before any weight cast."""
        if self.config.fuse_qkv:
            self.policy.requires_grad_(False)  # fuse_qkv refuses trainable layers; inference_mode needs no grads
            fused, left = fuse_qkv(self.policy), unfused_attention(self.policy)
            self._note(f"fused QKV in {fused} attention layers" + (f" (left unfused: {left})" if left else ""))
        if self.config.channels_last:
            self._note(f"channels-last patch embeddings: {channels_last_patch_embeddings(self.policy)} convs")

    def _quantise_towers(self) -> None:
        if self.device.type == "cuda" and torch.cuda.get_device_capability(self.device) < (8, 9):
            raise ValueError(f"--runtime.fp8_towers needs fp8 tensor cores (compute capability >= 8.9); "
                             f"{torch.cuda.get_device_name(self.device)} has {torch.cuda.get_device_capability(self.device)}")
        towers = [m for m in self.policy.modules() if isinstance(m, Tower)]
        if not towers:
            raise ValueError("--runtime.fp8_towers: this policy has no vla_dino vision towers to quantise")
        self._note(f"float8 weights in {sum(float8_linears(tower) for tower in towers)} tower Linears")

    def _note(self, message: str) -> None:
        self.notes.append(message)
        logger.info("runtime: %s", message)

    def _autocast(self) -> contextlib.AbstractContextManager:
        # The weight-cast cache must be off while a CUDA graph is captured (torch.cuda graph docs); it only
        # lives for one autocast region, where each weight is cast once anyway, so it is off throughout
        # (one autocast state: torch.compile guards do not see a change between warm-up and capture).
        return autocast(self.dtype, self.device, cache_enabled=False)

    def _policy_call(self, batch: dict) -> torch.Tensor:
        with self._autocast():
            return self._predict(batch)

    def _upload(self, observation: Mapping[str, np.ndarray]) -> None:
        """Raw observation → the static device buffers (via pinned host buffers on CUDA, non-blocking)."""
        if self._copied is not None:
            self._copied.synchronize()  # a pending non-blocking copy may still read the pinned buffers
        for name, host in self._host.items():
            host.numpy()[...] = observation[name]
            if self._dev[name] is not host:
                self._dev[name].copy_(host, non_blocking=True)
        if self.device.type == "cuda":
            self._copied = torch.cuda.Event()
            self._copied.record()

    def _prepare(self, task: str | None) -> dict:
        """Static device buffers → LeRobot batch, the arithmetic of ``prepare_observation_for_inference``:
        images float32 / 255, HWC → CHW; everything batch 1."""
        batch: dict[str, Any] = {}
        for spec in self._inputs:
            x = self._dev[spec.name]
            batch[spec.name] = (x.to(torch.float32) / 255).permute(2, 0, 1).unsqueeze(0) if spec.is_image else x.unsqueeze(0)
        batch["task"] = task or ""
        batch["robot_type"] = ""
        return batch

    def _device_pipeline(self, task: str | None) -> torch.Tensor:
        """Static device buffers → preprocessor → policy → postprocessor: the chunk (T, action_dim) float32."""
        return self.postprocessor(self._policy_call(self.preprocessor(self._prepare(task))))[0].float()

    def _download(self, actions: torch.Tensor) -> np.ndarray:
        if self.device.type == "cuda":  # one non-blocking copy into pinned memory, then wait for the stream
            self._out.copy_(actions, non_blocking=True)
            torch.cuda.current_stream(self.device).synchronize()
            return self._out.numpy().copy()
        return actions.cpu().numpy().copy()

    @torch.inference_mode()
    def _run(self, observation: Mapping[str, np.ndarray], task: str | None) -> np.ndarray:
        self._upload(observation)
        segment = self._segment
        inputs = segment.inputs(task)
        if self._graph is not None and self._graph.matches(inputs):
            output = self._graph(inputs)
        else:
            if self._graph is not None:
                self._graph_misses += 1
                if self._graph_misses == 1:
                    logger.warning("runtime: batch differs from the captured CUDA graph's (shape/task); running eagerly")
            output = segment.run(inputs)
        return self._download(segment.finish(output))

    def _synthetic_observation(self, inputs: tuple[ArraySpec, ...], seed: int = 0) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        return {
            s.name: rng.integers(0, 256, s.shape, dtype=np.uint8) if s.is_image else rng.standard_normal(s.shape).astype(np.float32)
            for s in inputs
        }

    @torch.inference_mode()
    def _chunk_shape(self, observation: dict[str, np.ndarray]) -> tuple[int, int]:
        """The first (eager) call: it tells the chunk shape ``(T, action_dim)``."""
        self._upload(observation)
        chunk = self._policy_call(self.preprocessor(self._prepare(None)))
        if chunk.ndim != 3 or chunk.shape[0] != 1:
            raise ValueError(f"{type(self.policy).__name__}.predict_action_chunk returned shape {tuple(chunk.shape)}, expected (1, T, action_dim)")
        return chunk.shape[1], chunk.shape[2]

    def _warmup(self, observation: dict[str, np.ndarray], start: float) -> None:
        for _ in range(max(self.config.warmup_iters - 1, 0)):
            self._run(observation, None)
        self._note(f"warm-up: {self.config.warmup_iters} calls in {time.perf_counter() - start:.2f} s")
        if self.config.cuda_graphs:
            self._try_capture(observation)

    def _try_capture(self, capture_observation: dict[str, np.ndarray]) -> None:
        if self.device.type != "cuda":
            self._note(f"CUDA graphs skipped: device is {self.device.type}")
            return
        if self.config.compile and self.config.compile_mode == "reduce-overhead":
            self._note("CUDA graphs left to torch.compile (mode=reduce-overhead)")
            return
        # Check each replay on another observation than the captured one, so stale inputs would show.
        check_observation = self._synthetic_observation(self._inputs, seed=1)
        segments = [self._segment]
        if self.config.capture_processors:  # the whole device pipeline first; captured with task ""
            segments.insert(0, _Segment(
                "pre/post processors + policy", lambda task: {"task": task or ""},
                lambda inputs: self._device_pipeline(inputs["task"]), lambda chunk: chunk,
            ))
        for segment in segments:
            graph = self._checked_capture(segment, capture_observation, check_observation)
            if graph is not None:
                self._segment, self._graph = segment, graph
                return

    @torch.inference_mode()
    def _checked_capture(self, segment: _Segment, capture_observation: dict[str, np.ndarray],
                         check_observation: dict[str, np.ndarray]) -> CapturedGraph | None:
        """Capture ``segment.run``, then compare one replay with the eager segment on ``check_observation``;
        None if unusable."""
        what = segment.what
        try:
            self._upload(capture_observation)
            graph = CapturedGraph(segment.run, segment.inputs(None))
            self._upload(check_observation)
            replayed = graph(segment.inputs(None)).reshape(self._out.shape).float().clone()
            eager = segment.run(segment.inputs(None)).reshape(self._out.shape).float()
        except Exception as error:  # capture is impossible for some code (host syncs, dynamic shapes)
            message = str(error).strip().splitlines()[0][:160] if str(error).strip() else ""
            logger.warning("runtime: CUDA graph capture of the %s failed: %s: %s", what, type(error).__name__, error)
            self._note(f"CUDA graph of the {what} not captured ({type(error).__name__}: {message})")
            return None
        scale = 1.0 + eager.abs().max().item()
        error = (replayed - eager).abs().max().item()
        if error > GRAPH_CHECK_TOLERANCE[self.dtype] * scale:
            logger.warning("runtime: CUDA graph of the %s differs from eager by %.3g (stochastic?); not used", what, error)
            self._note(f"CUDA graph of the {what} not used: replay differs from eager by {error:.3g}")
            return None
        self._note(f"CUDA graph of the {what} captured (replay vs eager max diff {error:.2g})")
        return graph


def _action_stats(postprocessor: object) -> dict | None:
    """``stats["action"]`` of the postprocessor's unnormaliser (LeRobot ``UnnormalizerProcessorStep``), if any."""
    from lerobot.processor import UnnormalizerProcessorStep

    for step in getattr(postprocessor, "steps", ()):
        if isinstance(step, UnnormalizerProcessorStep) and step.stats and "action" in step.stats:
            return dict(step.stats["action"])
    return None


def _torch_dtype(spec: ArraySpec) -> torch.dtype:
    return torch.uint8 if spec.dtype == "uint8" else torch.float32
