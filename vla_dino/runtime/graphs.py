"""CUDA graphs for the runtime: one captured-graph type, whatever part of the pipeline it covers.

A :class:`CapturedGraph` is ``fn(inputs)`` captured over static tensors. Each call copies the tensors
of ``inputs`` into the static ones and replays; the non-tensor entries (task strings, ...) were baked
into the graph at capture, so :meth:`CapturedGraph.matches` says whether a replay computes ``fn(inputs)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch


def capture(fn: Callable[[], torch.Tensor]) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    """Capture ``fn()`` (which reads only static tensors) in a CUDA graph; returns it and its static output."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up on a side stream, as torch.cuda.graphs docs prescribe
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        output = fn()
    return graph, output


class CapturedGraph:
    """``fn(inputs)`` captured in a CUDA graph with static input/output tensors."""

    def __init__(self, fn: Callable[[dict], torch.Tensor], inputs: Mapping[str, Any]) -> None:
        self.static_inputs = {k: v.clone() for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        # Non-tensor entries (task strings, ...) are baked into the graph: replay only when they match.
        self.constants = {k: v for k, v in inputs.items() if not isinstance(v, torch.Tensor)}
        static_batch = {**self.constants, **self.static_inputs}
        self.graph, self.static_output = capture(lambda: fn(static_batch))

    def matches(self, inputs: Mapping[str, Any]) -> bool:
        if inputs.keys() != {**self.constants, **self.static_inputs}.keys():
            return False
        for key, value in inputs.items():
            if key in self.static_inputs:
                static = self.static_inputs[key]
                if value.shape != static.shape or value.dtype != static.dtype or value.device != static.device:
                    return False
            elif not _same_constant(value, self.constants[key]):
                return False
        return True

    def __call__(self, inputs: Mapping[str, Any]) -> torch.Tensor:
        for key, static in self.static_inputs.items():
            static.copy_(inputs[key], non_blocking=True)
        self.graph.replay()
        return self.static_output


def _same_constant(a: object, b: object) -> bool:
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:  # e.g. arrays: ambiguous truth value — treat as different (eager path, still correct)
        return False
