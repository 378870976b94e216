"""Optimizer parameter groups with DINOv2's multipliers.

lr_mult = layer_decay^(L + 1 − layer_id), layer_id = 0 for the embeddings (patch
projection, tokens, position embedding), i + 1 for block i, L + 1 for the final norm and the
heads; the patch projection is further × patch_embed_lr_mult. wd_mult = 0 for biases,
norms, layer-scale and tokens (cls / mask / register / position embedding), else 1.
Parameters with equal multipliers share one group.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

_NO_DECAY_KEYS = ("norm", "layer_scale", "lambda1", "cls_token", "mask_token", "register_tokens", "position_embeddings")


def _layer_id(name: str, num_layers: int) -> int:
    """`name` relative to the backbone's transformers model (embeddings.*, encoder.layer.i.*, …)."""
    if name.startswith("embeddings."):
        return 0
    if name.startswith("encoder.layer."):
        return int(name.split(".")[2]) + 1
    return num_layers + 1


def param_groups(
    network: nn.Module, num_layers: int, layer_decay: float, patch_embed_lr_mult: float
) -> list[dict]:
    """Groups over the trainable parameters of an `SSLNetwork` (backbone.model.*, *_head.*).

    Each group: params, name, lr_mult, wd_mult, is_last_layer, is_backbone.
    """
    groups: "OrderedDict[tuple, dict]" = OrderedDict()
    for name, param in network.named_parameters():
        if not param.requires_grad:
            continue
        is_backbone = name.startswith("backbone.")
        inner = name.removeprefix("backbone.model.") if is_backbone else name
        layer_id = _layer_id(inner, num_layers) if is_backbone else num_layers + 1
        lr_mult = layer_decay ** (num_layers + 1 - layer_id)
        if "patch_embeddings" in inner:
            lr_mult *= patch_embed_lr_mult
        wd_mult = 0.0 if name.endswith(".bias") or any(key in inner for key in _NO_DECAY_KEYS) else 1.0
        is_last_layer = "last_layer" in name
        key = (is_backbone, layer_id, "patch_embeddings" in inner, wd_mult, is_last_layer)
        if key not in groups:
            part = f"backbone.layer{layer_id}" if is_backbone else "heads"
            suffix = (".patch_embed" if "patch_embeddings" in inner else "") + (".last_layer" if is_last_layer else "")
            groups[key] = dict(
                params=[],
                name=part + suffix + (".decay" if wd_mult else ".no_decay"),
                lr_mult=lr_mult,
                wd_mult=wd_mult,
                is_last_layer=is_last_layer,
                is_backbone=is_backbone,
            )
        groups[key]["params"].append(param)
    return list(groups.values())
