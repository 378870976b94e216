"""Conversion between the official DINOv2 checkpoint layouts and transformers' Dinov2 models.

Two layouts are read, and detected from the keys (facebookresearch/dinov2, main @ b8931f7):

- **hub** (`dinov2_vit{s,b,l,g}14[_reg4]_pretrain.pth`, `dinov2/hub/backbones.py`): the teacher
  backbone only, one flat dict::

      cls_token (1,1,D)  pos_embed (1,1+M²,D)  mask_token (1,D)  register_tokens (1,R,D)
      patch_embed.proj.{weight,bias}
      blocks.i.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma}
          (SwiGLU, e.g. ViT-g: mlp.w12 = [gate; up] stacked on the output axis, mlp.w3 = down)
      norm.{weight,bias}

- **training** (what `dinov2/train/train.py` writes): `DinoVisionTransformer(block_chunks=N)`
  (N = 4 in `configs/train/vit{l,g}14.yaml`) stores block i of chunk c as `blocks.c.i.…` (the
  chunk is padded with parameter-free `nn.Identity` so i stays global); `do_test` saves
  `eval/<iter>/teacher_checkpoint.pth = {"teacher": {"backbone.…", "dino_head.…", "ibot_head.…"}}`
  and the checkpointer `{"model": {"student.backbone.…", "teacher.backbone.…", …}, "optimizer": …}`.
  We take the teacher (what `dinov2/eval/setup.py` evaluates), strip `backbone.` / `module.` as
  `dinov2/utils/utils.py:load_pretrained_weights` does, un-chunk the blocks and drop the heads.

The fused `attn.qkv` is split into query/key/value as transformers' `convert_dinov2_to_hf.py` does.
`transformers_to_official` (hence `DinoEncoder.save_official`) writes the hub layout, or the
training layout with `block_chunks=N`; `dinov2/train/ssl_meta_arch.py` reads
`student.pretrained_weights` as `torch.load(f)["model"]` with `strict=False` (so a layout
mismatch would be silently skipped there): save with `wrap="model"` and the run's `block_chunks`.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from transformers import Dinov2Config, Dinov2WithRegistersConfig

logger = logging.getLogger(__name__)

# Wrappers around the weights: DINOv2's eval checkpoint ("teacher"), its checkpointer and ours
# ("model"), Lightning and friends ("state_dict").
_CONTAINER_KEYS = ("teacher", "model", "state_dict")
# Key fragments added by wrappers (DDP, FSDP, activation checkpointing, torch.compile).
_WRAPPER_FRAGMENTS = ("module.", "_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")
# Training checkpoints hold both networks; the teacher is the one DINOv2 evaluates and releases.
_NETWORKS = ("teacher.", "student.")
_HEAD_PREFIXES = ("dino_head.", "ibot_head.")  # DINO and iBOT heads of SSLMetaArch

_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")
_CHUNKED_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(\d+)\.(.+)$")

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
    """An official checkpoint file (`.pth`/`.pt` via `weights_only=True`, or `.safetensors`) in
    either layout → the backbone in the hub layout (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        raw: Any = load_file(str(path))
    else:
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # pickle with arbitrary objects, truncated file, not a torch file
            raise ValueError(f"{path}: not a loadable weights-only torch checkpoint ({err})") from err
    return extract_backbone(raw, source=str(path))


def extract_backbone(raw: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """A loaded checkpoint object (hub or training layout, possibly wrapped) → hub-layout backbone."""
    state, path_taken = _unwrap(raw, source)
    state = _strip_wrappers(state)
    state, network = _select_network(state)
    backbone, ignored = {}, []
    for key, value in state.items():
        key = key[len("backbone.") :] if key.startswith("backbone.") else key
        if key.startswith(_HEAD_PREFIXES):
            ignored.append(key)
        else:
            backbone[key] = value
    backbone, chunks = _unchunk(backbone, source)
    if "patch_embed.proj.weight" not in backbone or "pos_embed" not in backbone or not any(
        _BLOCK_KEY.match(k) for k in backbone
    ):
        raise ValueError(f"{source}: not a DINOv2 backbone checkpoint; {_describe(raw, state)}")
    _fill_identity_layer_scale(backbone, source)
    notes = [f"read {'/'.join(path_taken) or 'top level'}"]
    if network:
        notes.append(f"took the {network.rstrip('.')} network")
    if chunks:
        notes.append(f"un-chunked {chunks} block chunks")
    if ignored:
        heads = sorted({k.split(".", 1)[0] for k in ignored})
        notes.append(f"ignored {len(ignored)} head tensors ({', '.join(heads)}): heads are not part of the encoder")
    if len(notes) > 1 or path_taken:
        logger.info("%s: %s", source, "; ".join(notes))
    return backbone


def _unwrap(raw: Any, source: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Descend through container dicts ({"teacher": …}, {"model": …, "optimizer": …}) to the tensors."""
    state, taken = raw, []
    while isinstance(state, dict) and state and not any(isinstance(v, torch.Tensor) for v in state.values()):
        key = next((k for k in _CONTAINER_KEYS if isinstance(state.get(k), dict)), None)
        if key is None:
            raise ValueError(f"{source}: not a DINOv2 backbone checkpoint; {_describe(raw, state)}")
        state, taken = state[key], taken + [key]
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{source}: expected a dict of tensors, got {type(state).__name__}")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}, taken


def _strip_wrappers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        for fragment in _WRAPPER_FRAGMENTS:
            key = key.replace(fragment, "")
        out[key] = value
    return out


def _select_network(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str | None]:
    for network in _NETWORKS:
        if any(k.startswith(network) for k in state):
            return {k[len(network) :]: v for k, v in state.items() if k.startswith(network)}, network
    return state, None


def _unchunk(state: dict[str, torch.Tensor], source: str) -> tuple[dict[str, torch.Tensor], int]:
    """`blocks.<chunk>.<i>.…` → `blocks.<i>.…` (i is already the global block index)."""
    chunked = {k: m for k in state if (m := _CHUNKED_BLOCK_KEY.match(k))}
    if not chunked:
        return state, 0
    flat = [k for k in state if _BLOCK_KEY.match(k) and k not in chunked]
    if flat:
        raise ValueError(f"{source}: mixes chunked (e.g. {next(iter(chunked))}) and flat block keys (e.g. {flat[0]})")
    out = {k: v for k, v in state.items() if k not in chunked}
    chunk_of: dict[int, int] = {}
    for key, match in chunked.items():
        chunk, block, suffix = int(match.group(1)), int(match.group(2)), match.group(3)
        if chunk_of.setdefault(block, chunk) != chunk:
            raise ValueError(f"{source}: block {block} appears in chunks {chunk_of[block]} and {chunk}")
        out[f"blocks.{block}.{suffix}"] = state[key]
    return out, len(set(chunk_of.values()))


def _fill_identity_layer_scale(state: dict[str, torch.Tensor], source: str) -> None:
    """DINOv2's ViT without `init_values` (layer-scale off) has no ls*.gamma: that is gamma = 1."""
    if any(k.endswith((".ls1.gamma", ".ls2.gamma")) for k in state):
        return
    dim = state["patch_embed.proj.weight"].shape[0]
    blocks = {int(m.group(1)) for k in state if (m := _BLOCK_KEY.match(k))}
    for block in blocks:
        for name in ("ls1", "ls2"):
            state[f"blocks.{block}.{name}.gamma"] = torch.ones(dim, dtype=state["patch_embed.proj.weight"].dtype)
    logger.info("%s: no layer-scale tensors (ls1/ls2.gamma); using gamma = 1 (layer-scale off)", source)


def _describe(raw: Any, state: Any) -> str:
    """What a file holds, for errors about files that are not a DINOv2 backbone."""
    parts = []
    if isinstance(raw, dict):
        parts.append(f"top-level keys {sorted(map(str, raw))[:10]}")
    if isinstance(state, dict) and state is not raw:
        parts.append(f"inner keys {sorted(map(str, state))[:10]}")
    if isinstance(state, dict):
        tensors = [k for k, v in state.items() if isinstance(v, torch.Tensor)]
        groups = Counter(str(k).split(".", 1)[0] for k in tensors)
        if tensors:
            parts.append(f"{len(tensors)} tensors grouped by first name part {dict(groups.most_common(8))}")
    parts.append(
        "expected DINOv2 backbone keys (patch_embed.proj.weight, pos_embed, blocks.<i>.… or chunked "
        "blocks.<chunk>.<i>.…), optionally under 'teacher' / 'model' and 'backbone.' / 'teacher.backbone.'"
    )
    return "; ".join(parts)


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
        mlp_ratio = 4  # SwiGLU keeps 2/3 of 4·D rounded to 8 (SwiGLUFFNFused); every released g uses ratio 4
    elif "blocks.0.mlp.fc1.weight" in state:
        mlp_ratio = state["blocks.0.mlp.fc1.weight"].shape[0] // hidden
    else:
        found = sorted(k for k in state if k.startswith("blocks.0."))
        raise ValueError(
            f"not an official DINOv2 backbone: block 0 has neither mlp.fc1.weight (MLP) nor mlp.w12.weight "
            f"(SwiGLU); its keys are {found}"
        )
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


def transformers_to_official(state: dict[str, torch.Tensor], block_chunks: int = 0) -> dict[str, torch.Tensor]:
    """Inverse of `official_to_transformers`: a transformers Dinov2 state dict in the hub layout, or
    with `block_chunks=N` in the layout of `DinoVisionTransformer(block_chunks=N)` (`blocks.c.i.…`)."""
    out = _transformers_to_hub(state)
    if block_chunks <= 0:
        return out
    depth = 1 + max(int(m.group(1)) for k in out if (m := _BLOCK_KEY.match(k)))
    if block_chunks > depth:
        raise ValueError(f"block_chunks={block_chunks} is more than the {depth} blocks of this encoder")
    chunk_size = depth // block_chunks  # as DinoVisionTransformer: chunks start at 0, s, 2s, … < depth
    chunked = {}
    for key, value in out.items():
        match = _BLOCK_KEY.match(key)
        if match is None:
            chunked[key] = value
        else:
            block = int(match.group(1))
            chunked[f"blocks.{block // chunk_size}.{block}.{match.group(2)}"] = value
    return chunked


def _transformers_to_hub(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
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
