"""Device, precision and compile-mode names, resolved one way for every CLI and config.

Precisions have one canonical short name (``fp32`` | ``bf16`` | ``fp16``); the torch spellings
(``float32`` | ``bfloat16`` | ``float16``) are accepted too, so both existing flag styles keep working.
"""

from __future__ import annotations

import contextlib

import torch

PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_SPELLINGS = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
# torch.compile's modes, for the flags that pass one through (pretraining, the runtime)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def resolve_device(name: str = "auto", local_rank: int | None = None, flag: str = "--device") -> torch.device:
    """``"auto"``: CUDA when available, else CPU. With ``local_rank`` (torchrun) an index-less CUDA device
    gets that index. Raises ValueError naming ``flag`` when CUDA is asked for but absent."""
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda" if local_rank is None else f"cuda:{local_rank}")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{flag}={name}: CUDA is not available on this machine (use {flag}=cpu or auto)")
        if device.index is None and local_rank is not None:
            device = torch.device(f"cuda:{local_rank}")
    return device


def resolve_dtype(precision: str, device: torch.device, flag: str = "--precision") -> str:
    """The canonical precision name. ``"auto"``: bf16 on a CUDA device that supports it, else fp32."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    name = _SPELLINGS.get(precision, precision)
    if name not in PRECISIONS:
        raise ValueError(f"{flag}={precision!r}: expected one of {sorted(PRECISIONS)} or 'auto'")
    return name


def autocast(precision: str, device: torch.device, cache_enabled: bool | None = None) -> contextlib.AbstractContextManager:
    """Autocast to ``precision`` on ``device`` (weights stay as they are); a no-op for fp32."""
    name = _SPELLINGS.get(precision, precision)
    if name == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=PRECISIONS[name], cache_enabled=cache_enabled)
