"""Named DINOv2 sizes with the released configurations, plus tiny sizes for tests."""

from __future__ import annotations

from typing import Any

from transformers import Dinov2Config, Dinov2WithRegistersConfig

# Released DINOv2 backbones: patch 14, position embedding for 518² (37×37), layer-scale,
# LayerNorm eps 1e-6, exact GELU (SwiGLU for g). Head dim is 64 for every released size.
_RELEASED: dict[str, dict[str, Any]] = {
    "vits14": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6),
    "vitb14": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12),
    "vitl14": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16),
    "vitg14": dict(hidden_size=1536, num_hidden_layers=40, num_attention_heads=24, use_swiglu_ffn=True),
}
_RELEASED_COMMON: dict[str, Any] = dict(
    image_size=518, patch_size=14, mlp_ratio=4, layerscale_value=1.0, layer_norm_eps=1e-6
)

# Tiny random-init sizes for tests and CPU smoke runs (hidden 32/64, 2 layers, 56 px).
_TINY: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2),
    "small-test": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2),
}
_TINY_COMMON: dict[str, Any] = dict(image_size=56, patch_size=14, layerscale_value=1.0, layer_norm_eps=1e-6)

NUM_REGISTERS = 4
REGISTER_SUFFIX = "_reg"

# The transformers hub ids of the released checkpoints, for documentation and presets.
HUB_IDS: dict[str, str] = {
    "vits14": "facebook/dinov2-small",
    "vitb14": "facebook/dinov2-base",
    "vitl14": "facebook/dinov2-large",
    "vitg14": "facebook/dinov2-giant",
    "vits14_reg": "facebook/dinov2-with-registers-small",
    "vitb14_reg": "facebook/dinov2-with-registers-base",
    "vitl14_reg": "facebook/dinov2-with-registers-large",
    "vitg14_reg": "facebook/dinov2-with-registers-giant",
}


def size_names() -> list[str]:
    base = [*_RELEASED, *_TINY]
    return base + [name + REGISTER_SUFFIX for name in base]


def config_for_size(name: str, **overrides: Any) -> Dinov2Config | Dinov2WithRegistersConfig:
    """The transformers config of a named size; `overrides` replace any config field.

    `vitb14` → Dinov2Config, `vitb14_reg` → Dinov2WithRegistersConfig with 4 registers.
    """
    base, registers = (name[: -len(REGISTER_SUFFIX)], True) if name.endswith(REGISTER_SUFFIX) else (name, False)
    if base in _RELEASED:
        fields = {**_RELEASED_COMMON, **_RELEASED[base]}
    elif base in _TINY:
        fields = {**_TINY_COMMON, **_TINY[base]}
    else:
        raise ValueError(f"unknown encoder size {name!r}; expected one of {size_names()}")
    fields.update(overrides)
    if registers:
        fields.setdefault("num_register_tokens", NUM_REGISTERS)
        return Dinov2WithRegistersConfig(**fields)
    if fields.get("num_register_tokens"):
        return Dinov2WithRegistersConfig(**fields)
    fields.pop("num_register_tokens", None)
    return Dinov2Config(**fields)
