"""Conversion between the official DINOv2 checkpoint layout and transformers' Dinov2 models.

Released files (`dinov2_vit{s,b,l,g}14[_reg4]_pretrain.pth`) hold the teacher backbone only:

    cls_token (1,1,D)  pos_embed (1,1+M²,D)  mask_token (1,D)  register_tokens (1,R,D)
    patch_embed.proj.{weight,bias}
    blocks.i.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma}
        (ViT-g: mlp.w12 = [gate; up] stacked on the output axis, mlp.w3 = down)
    norm.{weight,bias}

The fused `attn.qkv` is split into query/key/value as transformers' converter does.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from transformers import Dinov2Config, Dinov2WithRegistersConfig

# Wrappers seen around backbone weights in training checkpoints (DINOv2's own, DDP, ours).
_CONTAINER_KEYS = ("teacher", "model", "state_dict", "backbone")
_PREFIXES = ("teacher.backbone.", "student.backbone.", "backbone.", "module.")

_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")

# Per-block official suffix → transformers suffix (qkv and SwiGLU handled separately).
_BLOCK_RENAMES = {
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "ls1.gamma": "layer_scale1.lambda1",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
    "mlp.fc1.weight": "mlp.fc1.weight",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight",
    "mlp.fc2.bias": "mlp.fc2.bias",
    "ls2.gamma": "layer_scale2.lambda1",
}
# transformers renamed the attention projections in 5.x; both namings are supported.
_ATTENTION_NAMES = {
    "new": {"q": "attention.q_proj", "k": "attention.k_proj", "v": "attention.v_proj", "o": "attention.o_proj"},
    "old": {
        "q": "attention.attention.query",
        "k": "attention.attention.key",
        "v": "attention.attention.value",
        "o": "attention.output.dense",
    },
}
_GLOBAL_RENAMES = {
    "cls_token": "embeddings.cls_token",
    "pos_embed": "embeddings.position_embeddings",
    "mask_token": "embeddings.mask_token",
    "register_tokens": "embeddings.register_tokens",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "norm.weight": "layernorm.weight",
    "norm.bias": "layernorm.bias",
}


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read an official-layout checkpoint (.pth/.pt via `weights_only=True`, or .safetensors)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: Any = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # pickle with arbitrary objects, truncated file, not a torch file
            raise ValueError(f"{path}: not a loadable weights-only torch checkpoint ({err})") from err
    while isinstance(state, dict) and len(state) > 0 and not isinstance(next(iter(state.values())), torch.Tensor):
        inner = next((state[k] for k in _CONTAINER_KEYS if isinstance(state.get(k), dict)), None)
        if inner is None:
            raise ValueError(f"{path}: no tensors found; top-level keys are {sorted(state)[:10]}")
        state = inner
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{path}: expected a dict of tensors, got {type(state).__name__}")
    out = {}
    for key, value in state.items():
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                break
        out[key] = value
    return out


def config_from_official(
    state: dict[str, torch.Tensor], **overrides: Any
) -> Dinov2Config | Dinov2WithRegistersConfig:
    """Infer the transformers config from tensor shapes (head count: head dim 64, as released)."""
    if "patch_embed.proj.weight" not in state or "pos_embed" not in state:
        raise ValueError("not an official DINOv2 backbone: missing 'patch_embed.proj.weight' or 'pos_embed'")
    hidden, channels, patch, _ = state["patch_embed.proj.weight"].shape
    num_positions = state["pos_embed"].shape[1] - 1
    grid = int(round(num_positions**0.5))
    if grid * grid != num_positions:
        raise ValueError(f"pos_embed holds {num_positions} patch positions, not a square grid")
    depth = 1 + max(int(m.group(1)) for k in state if (m := _BLOCK_KEY.match(k)))
    swiglu = "blocks.0.mlp.w12.weight" in state
    if swiglu:
        mlp_hidden = state["blocks.0.mlp.w12.weight"].shape[0] // 2
        mlp_ratio = 4  # SwiGLU keeps 2/3 of 4·D rounded to 8; every released g uses ratio 4
    else:
        mlp_hidden = state["blocks.0.mlp.fc1.weight"].shape[0]
        mlp_ratio = mlp_hidden // hidden
    fields: dict[str, Any] = dict(
        hidden_size=hidden,
        num_hidden_layers=depth,
        num_attention_heads=max(1, hidden // 64),
        mlp_ratio=mlp_ratio,
        image_size=grid * patch,
        patch_size=patch,
        num_channels=channels,
        use_swiglu_ffn=swiglu,
        layerscale_value=1.0,
        layer_norm_eps=1e-6,
        qkv_bias="blocks.0.attn.qkv.bias" in state,
    )
    fields.update(overrides)
    if "register_tokens" in state:
        return Dinov2WithRegistersConfig(num_register_tokens=state["register_tokens"].shape[1], **fields)
    return Dinov2Config(**fields)


def official_to_transformers(
    state: dict[str, torch.Tensor], target_keys: set[str], source: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """Rename/split an official state dict into the keys of a transformers Dinov2 model.

    `target_keys` is the model's own `state_dict().keys()`, used to pick the SwiGLU naming of the
    installed transformers version and to report keys that have no home.
    """
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    split_swiglu = any(k.endswith("mlp.gate_proj.weight") for k in target_keys)
    attn = _ATTENTION_NAMES["new" if any(".attention.q_proj." in k for k in target_keys) else "old"]
    for key, value in state.items():
        if key in _GLOBAL_RENAMES:
            out[_GLOBAL_RENAMES[key]] = value
            continue
        match = _BLOCK_KEY.match(key)
        if match is None:
            unknown.append(key)
            continue
        layer, suffix = match.groups()
        prefix = f"encoder.layer.{layer}."
        if suffix in _BLOCK_RENAMES:
            out[prefix + _BLOCK_RENAMES[suffix]] = value
        elif suffix.startswith("attn.qkv."):
            kind = suffix.rsplit(".", 1)[1]  # weight | bias
            for name, part in zip("qkv", value.chunk(3, dim=0)):
                out[f"{prefix}{attn[name]}.{kind}"] = part
        elif suffix.startswith("attn.proj."):
            out[f"{prefix}{attn['o']}.{suffix.rsplit('.', 1)[1]}"] = value
        elif suffix.startswith("mlp.w12."):
            kind = suffix.rsplit(".", 1)[1]
            if split_swiglu:
                gate, up = value.chunk(2, dim=0)
                out[f"{prefix}mlp.gate_proj.{kind}"] = gate
                out[f"{prefix}mlp.up_proj.{kind}"] = up
            else:
                out[f"{prefix}mlp.weights_in.{kind}"] = value
        elif suffix.startswith("mlp.w3."):
            kind = suffix.rsplit(".", 1)[1]
            out[f"{prefix}mlp.{'down_proj' if split_swiglu else 'weights_out'}.{kind}"] = value
        else:
            unknown.append(key)
    unknown += [k for k in out if k not in target_keys and k not in unknown]
    if unknown:
        raise ValueError(f"{source}: unexpected keys for a DINOv2 backbone: {sorted(unknown)[:12]}")
    missing = sorted(target_keys - set(out))
    if missing:
        raise ValueError(f"{source}: missing keys for this DINOv2 config: {missing[:12]}")
    return out


def transformers_to_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of `official_to_transformers`: a transformers Dinov2 state dict in the official layout."""
    inverse_global = {v: k for k, v in _GLOBAL_RENAMES.items()}
    inverse_block = {v: k for k, v in _BLOCK_RENAMES.items()}
    out: dict[str, torch.Tensor] = {}
    layer_key = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
    for key, value in state.items():
        if key in inverse_global:
            out[inverse_global[key]] = value
            continue
        match = layer_key.match(key)
        if match is None:
            raise ValueError(f"no official name for transformers key {key!r}")
        layer, suffix = match.groups()
        block = f"blocks.{layer}."
        kind = suffix.rsplit(".", 1)[-1]
        attn = next((names for names in _ATTENTION_NAMES.values() if suffix.startswith(names["q"] + ".")), None)
        if suffix in inverse_block:
            out[block + inverse_block[suffix]] = value
        elif attn is not None:
            k = state[f"encoder.layer.{layer}.{attn['k']}.{kind}"]
            v = state[f"encoder.layer.{layer}.{attn['v']}.{kind}"]
            out[f"{block}attn.qkv.{kind}"] = torch.cat([value, k, v], dim=0)
        elif any(suffix.startswith(f"{names['o']}.") for names in _ATTENTION_NAMES.values()):
            out[f"{block}attn.proj.{kind}"] = value
        elif any(suffix.startswith((f"{n['k']}.", f"{n['v']}.")) for n in _ATTENTION_NAMES.values()) or suffix.startswith(
            "mlp.up_proj."
        ):
            continue  # folded into qkv / w12 with their partner
        elif suffix.startswith("mlp.gate_proj."):
            up = state[f"encoder.layer.{layer}.mlp.up_proj.{kind}"]
            out[f"{block}mlp.w12.{kind}"] = torch.cat([value, up], dim=0)
        elif suffix.startswith("mlp.weights_in."):
            out[f"{block}mlp.w12.{kind}"] = value
        elif suffix.startswith(("mlp.down_proj.", "mlp.weights_out.")):
            out[f"{block}mlp.w3.{kind}"] = value
        else:
            raise ValueError(f"no official name for transformers key {key!r}")
    return out
