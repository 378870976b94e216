"""Where transformers' vision attention layers keep their projections, per class and version.

Code that calls an attention layer's pieces directly (the packed forward of `DinoEncoder`, the runtime's fused
QKV rewrite in `vla_dino.adapter.inference`) looks them up here, so a new transformers layout is one table entry.
Checked against the sources of transformers 5.17 and 5.24 (models/dinov2*/modeling_*.py): each forward computes
softmax(q kᵀ · scale [+ mask]) v per head, with heads laid out as (…, heads, head_dim) in the projection's
output, dropout only in training.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class AttentionLayout:
    """Attribute names of one transformers attention class."""

    q: str
    k: str
    v: str
    out: str | None  # output projection in the same module; None: the parent applies it
    heads: str
    head_dim: str
    scale: str
    dropout: str
    rope: bool = False  # DINOv3: rotary embedding on the patch tokens of q and k


# transformers >= 5.2x: one `Dinov2Attention` with q/k/v/o projections.
_DINOV2 = AttentionLayout("q_proj", "k_proj", "v_proj", "o_proj", "num_attention_heads", "head_dim", "scaling", "attention_dropout")
# transformers <= 5.1x: `Dinov2Attention` wraps `Dinov2SelfAttention` (`.attention`, returns the per-head context)
# and `Dinov2SelfOutput` (`.output`, the output Linear + dropout).
_DINOV2_SELF = AttentionLayout("query", "key", "value", None, "num_attention_heads", "attention_head_size", "scaling", "dropout_prob")

DINOV2_LAYOUTS: dict[str, AttentionLayout] = {
    "Dinov2Attention": _DINOV2,
    "Dinov2WithRegistersAttention": _DINOV2,
    "Dinov2SelfAttention": _DINOV2_SELF,
    "Dinov2WithRegistersSelfAttention": _DINOV2_SELF,
}


def attention_layout(module: nn.Module, layouts: dict[str, AttentionLayout] = DINOV2_LAYOUTS) -> AttentionLayout | None:
    """`module`'s layout from `layouts` (by class name), if its attributes match it, else None."""
    layout = layouts.get(type(module).__name__)
    if layout is None or not type(module).__module__.startswith("transformers."):
        return None
    linears = [getattr(module, name, None) for name in (layout.q, layout.k, layout.v)]
    if not all(isinstance(linear, nn.Linear) for linear in linears):
        return None  # another layout under the same class name (e.g. 5.1x `Dinov2Attention`, a wrapper)
    if len({(linear.in_features, linear.out_features) for linear in linears}) != 1:
        return None
    heads, head_dim = getattr(module, layout.heads, None), getattr(module, layout.head_dim, None)
    if not isinstance(heads, int) or not isinstance(head_dim, int) or heads * head_dim != linears[0].out_features:
        return None
    return layout
