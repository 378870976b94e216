"""Inference-only rewrites of the vision towers, for the low-latency runtime (`vla_dino.runtime`).

- `fuse_qkv`: each attention layer's separate query / key / value Linears become one Linear of the
  concatenated weights (one matmul launch instead of three, and one read of the activations), followed by
  `torch.nn.functional.scaled_dot_product_attention` and the layer's own output projection.
- `channels_last_patch_embeddings`: the patchify Conv2d of each tower in channels-last memory format (its
  output is then already token-major, so the `flatten(2).transpose(1, 2)` after it needs no copy).
- `float8_linears`: Linear layers with float8 (e4m3) weights, multiplied by `torch._scaled_mm` with the
  activations quantised per call (fp8 tensor cores on Hopper / Ada GPUs). Changes numbers (e4m3 keeps 3
  mantissa bits): measure the action error against bf16 before using it (`bench_runtime_latency.py`).

The first two work on any module tree (a tower, a `FusedBackbone`, a whole LeRobot policy) and change no
numbers beyond float rounding. A fused model's `state_dict` has `qkv.*` keys in place of `q_proj` / `k_proj` /
`v_proj` (or `query` / `key` / `value`): do not save it as a checkpoint.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

import torch
from torch import nn
from transformers.models.dinov3_vit.modeling_dinov3_vit import apply_rotary_pos_emb

from vla_dino.encoder.attention import DINOV2_LAYOUTS, AttentionLayout, attention_layout

logger = logging.getLogger(__name__)


_SIGLIP = AttentionLayout("q_proj", "k_proj", "v_proj", "out_proj", "num_heads", "head_dim", "scale", "dropout")

# transformers class name → layout: DINOv2's (both transformers layouts) and the other towers', checked against
# the sources of transformers 5.17 and 5.24 (models/{siglip, siglip2, dinov3_vit}/modeling_*.py). Each of these
# forwards returns (output, attention weights).
_LAYOUTS: dict[str, AttentionLayout] = {
    **DINOV2_LAYOUTS,
    "SiglipAttention": _SIGLIP,
    "Siglip2Attention": _SIGLIP,
    "DINOv3ViTAttention": AttentionLayout("q_proj", "k_proj", "v_proj", "o_proj", "num_heads", "head_dim", "scaling", "dropout", rope=True),
}

# Child names by which `unfused_attention` recognises an attention layer with separate projections.
_QKV_NAMES = (("q_proj", "k_proj", "v_proj"), ("query", "key", "value"))


class FusedQKVAttention(nn.Module):
    """Drop-in for a transformers vision attention layer, with q, k, v from one Linear.

    `qkv` maps hidden → [q | k | v] (each heads · head_dim wide, heads outermost as in the originals);
    attention is `scaled_dot_product_attention` with the original's scale (and `attention_mask` as its
    `attn_mask`, as transformers' SDPA path passes it). Returns `(output, None)` as the replaced forwards
    do (their second value, the attention weights, is None under SDPA too). `output` is after `out_proj`,
    or the per-head context when the parent applies the output projection (`out_proj=None`).
    It always runs SDPA, whatever the model's `config._attn_implementation` (eager, sdpa and flash compute the
    same values up to rounding), so attention maps (`output_attentions`) are not available from it.
    """

    def __init__(
        self, qkv: nn.Linear, out_proj: nn.Linear | None, num_heads: int, head_dim: int, scale: float,
        dropout: float = 0.0, rotary: Callable | None = None,
    ) -> None:
        super().__init__()
        self.qkv, self.out_proj = qkv, out_proj
        self.num_heads, self.head_dim, self.scale, self.dropout = num_heads, head_dim, scale, dropout
        self.rotary = rotary

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs: object,  # transformers' per-call attention kwargs; nothing here uses them
    ) -> tuple[torch.Tensor, None]:
        batch, tokens, _ = hidden_states.shape
        qkv = self.qkv(hidden_states).view(batch, tokens, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, tokens, head_dim)
        if self.rotary is not None:
            if position_embeddings is None:
                raise ValueError("this attention layer applies RoPE: position_embeddings (cos, sin) are required")
            query, key = self.rotary(query, key, *position_embeddings)
        context = nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=self.dropout if self.training else 0.0, scale=self.scale
        )
        context = context.transpose(1, 2).reshape(batch, tokens, self.num_heads * self.head_dim)
        return (self.out_proj(context) if self.out_proj is not None else context), None

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, head_dim={self.head_dim}, scale={self.scale:.4g}, rope={self.rotary is not None}"


def fuse_qkv(module: nn.Module) -> int:
    """Replace every attention layer of a known transformers class under `module` by a
    `FusedQKVAttention` with the same weights; returns how many were replaced.

    Known: DINOv2 and DINOv2 with registers (transformers 5.1x `Dinov2[WithRegisters]SelfAttention` and 5.2x
    `Dinov2[WithRegisters]Attention`), SigLIP and SigLIP 2 (`SiglipAttention`, `Siglip2Attention`) and
    DINOv3 ViT (`DINOv3ViTAttention`, RoPE via transformers' own `apply_rotary_pos_emb`). Other layers
    with separate q / k / v Linears are left as they are and logged as a warning; `unfused_attention`
    lists them. Layers already fused are skipped, so calling it twice is harmless.

    Inference only: raises RuntimeError if a layer to fuse is in training mode or has parameters that
    require grad (the fused weights are new tensors: an optimizer would keep updating the old ones).
    Call `module.eval().requires_grad_(False)` first. A missing q/k/v bias (DINOv3's key) becomes zeros.
    """
    targets = [(name, child) for name, child in module.named_modules() if attention_layout(child, _LAYOUTS) is not None]
    fused = _replace_for_inference(module, targets, lambda child: _fused(child, attention_layout(child, _LAYOUTS)), "fuse_qkv")
    left = unfused_attention(module)
    if left:
        logger.warning("fuse_qkv: left unfused (no fused forward for these classes): %s", _describe(left))
    return fused


def unfused_attention(module: nn.Module) -> dict[str, int]:
    """Class name → count of the layers under `module` that still have separate q / k / v Linears."""
    found = Counter()
    for child in module.modules():
        for names in _QKV_NAMES:
            if all(isinstance(getattr(child, n, None), nn.Linear) for n in names):
                found[type(child).__name__] += 1
    return dict(found)


def channels_last_patch_embeddings(module: nn.Module) -> int:
    """Store every patchify Conv2d under `module` (kernel == stride, no padding, no groups: the ViT patch
    embeddings of DINOv2 / DINOv3 / SigLIP; SigLIP 2's NaFlex embedding is a Linear) in channels-last
    memory format; returns how many. The output values are those of the contiguous conv up to float
    rounding; the weights are unchanged."""
    convs = [
        m for m in module.modules()
        if isinstance(m, nn.Conv2d) and m.kernel_size == m.stride and m.padding in ((0, 0), "valid") and m.groups == 1
    ]
    for conv in convs:
        conv.to(memory_format=torch.channels_last)
    return len(convs)


E4M3_MAX = torch.finfo(torch.float8_e4m3fn).max  # 448


class Float8Linear(nn.Module):
    """`y = x Wᵀ + b` with W stored in float8 e4m3 under one fp32 scale (W ≈ scale · W_fp8), and x quantised
    the same way on every call from its own max |x| (dynamic per-tensor scaling, as torchao's float8
    inference recipe), both fed to `torch._scaled_mm`. The output has the autocast dtype when autocast is on,
    else the input's; the bias is added in that dtype. No host reads: the activation scale stays on the device,
    so the layer can be captured in a CUDA graph."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax().clamp(min=1e-12) / E4M3_MAX
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight_fp8", (weight / scale).to(torch.float8_e4m3fn))  # (out, in)
        self.register_buffer("weight_scale", scale.reshape(()))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device = x.device.type
        out_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        flat = x.reshape(-1, self.in_features).float()
        x_scale = flat.abs().amax().clamp(min=1e-12) / E4M3_MAX
        x_fp8 = (flat / x_scale).to(torch.float8_e4m3fn)
        bias = None if self.bias is None else self.bias.to(out_dtype)
        # mat2 must be column-major: the transpose of the row-major (out, in) weight is
        out = torch._scaled_mm(x_fp8, self.weight_fp8.t(), scale_a=x_scale, scale_b=self.weight_scale, bias=bias,
                               out_dtype=out_dtype)
        return out.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, e4m3"


def float8_linears(module: nn.Module) -> int:
    """Replace every `nn.Linear` under `module` whose sizes are multiples of 16 (`torch._scaled_mm`'s rule) by a
    `Float8Linear`; returns how many. Inference only, like `fuse_qkv` (call it after any dtype cast of the
    model: `.to(dtype)` would turn the float8 weights into that dtype). Apply it to the vision towers, not
    to a policy head whose last layer writes actions."""
    targets = [(name, child) for name, child in module.named_modules()
               if type(child) is nn.Linear and child.in_features % 16 == 0 and child.out_features % 16 == 0]
    return _replace_for_inference(module, targets, Float8Linear, "float8_linears")


def _describe(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} ×{count}" for name, count in sorted(counts.items()))


def _fused(module: nn.Module, layout: AttentionLayout) -> FusedQKVAttention:
    q, k, v = (getattr(module, n) for n in (layout.q, layout.k, layout.v))
    has_bias = any(linear.bias is not None for linear in (q, k, v))
    qkv = nn.Linear(q.in_features, 3 * q.out_features, bias=has_bias, device=q.weight.device, dtype=q.weight.dtype)
    with torch.no_grad():
        qkv.weight.copy_(torch.cat([q.weight, k.weight, v.weight]))
        if has_bias:
            zeros = torch.zeros_like(q.weight[:, 0])
            qkv.bias.copy_(torch.cat([linear.bias if linear.bias is not None else zeros for linear in (q, k, v)]))
    qkv.requires_grad_(False)
    fused = FusedQKVAttention(
        qkv, getattr(module, layout.out) if layout.out else None, getattr(module, layout.heads),
        getattr(module, layout.head_dim), float(getattr(module, layout.scale)), float(getattr(module, layout.dropout)),
        apply_rotary_pos_emb if layout.rope else None,
    )
    return fused.eval()


def _replace_for_inference(
    root: nn.Module, targets: list[tuple[str, nn.Module]], build: Callable[[nn.Module], nn.Module], what: str
) -> int:
    """Swap each (name, layer) of `targets` under `root` for `build(layer)`, after checking them all: a layer
    in training mode or with trainable weights is refused (the rewrites make new tensors, which an optimiser
    would not update), and so is `root` itself (it cannot be swapped in place). Returns how many."""
    for name, child in targets:
        if not name:
            raise ValueError(f"{what}: pass the model that contains the layer, not the layer itself")
        if child.training or any(p.requires_grad for p in child.parameters()):
            raise RuntimeError(f"{what}: {name} is in training mode or requires grad; it is for inference only "
                               "(call .eval().requires_grad_(False) first)")
    for name, child in targets:
        _replace(root, name, build(child))
    return len(targets)


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attribute = name.rpartition(".")
    setattr(root.get_submodule(parent_name), attribute, new)


__all__ = ["Float8Linear", "FusedQKVAttention", "channels_last_patch_embeddings", "float8_linears", "fuse_qkv", "unfused_attention"]
