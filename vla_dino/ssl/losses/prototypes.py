"""Cross-entropy against K prototypes without storing the (rows × K) student logits.

iBOT's student logits are M masked patches × K prototypes (ViT-S/14, batch 64, K = 65536: ~5k × 65536, over a
gigabyte in fp32), and the plain path (`F.linear` → `log_softmax` → `−Σ t · log p`) keeps several such matrices
alive between forward and backward. Here the logits are formed chunk by chunk from the bottleneck features and the
prototypes, reduced to one log-sum-exp per row, and formed again in backward; only the targets (which the teacher
made anyway) and the features stay. The same idea as fused linear + cross-entropy kernels for language-model
heads (e.g. Liger-Kernel's `FusedLinearCrossEntropy`), written in plain torch for soft targets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Rows per chunk so that a chunk's fp32 logits stay near 64 MiB.
_CHUNK_ELEMENTS = 1 << 24


def prototype_cross_entropy(
    features: torch.Tensor, prototypes: torch.Tensor, targets: torch.Tensor, student_temp: float,
    row_weights: torch.Tensor, chunk_rows: int | None = None,
) -> torch.Tensor:
    """L = Σ_r w_r · H(t_r, softmax(z_r / τ)),  z_r = f_r · Pᵀ,  H(t, p) = −Σ_k t_k log p_k.

    `features` (M, d), `prototypes` (K, d) (the head's normalised last layer), `targets` (M, K), `row_weights` (M,).
    With lse_r = log Σ_k exp(z_rk / τ): H_r = lse_r · Σ_k t_rk − Σ_k t_rk z_rk / τ, and
    ∂L/∂z_rk = w_r (p_rk Σ_j t_rj − t_rk) / τ,  p = softmax(z_r / τ); so ∂L/∂f = G P and ∂L/∂P = Gᵀ f.

    Logits are computed in the autocast dtype when autocast is on (as `F.linear` would), the softmax and the
    loss in fp32. `chunk_rows` (default: 2²⁴ / K rows) bounds the temporaries. Equals `cross_entropy` on
    `F.linear(features, prototypes)` weighted and summed, within float rounding.
    """
    if features.shape[0] != targets.shape[0] or prototypes.shape[0] != targets.shape[1] or row_weights.shape != features.shape[:1]:
        raise ValueError(
            f"prototype_cross_entropy: features {tuple(features.shape)}, prototypes {tuple(prototypes.shape)}, "
            f"targets {tuple(targets.shape)}, row_weights {tuple(row_weights.shape)}; expected (M, d), (K, d), (M, K), (M,)"
        )
    chunk = chunk_rows or max(1, _CHUNK_ELEMENTS // max(1, prototypes.shape[0]))
    device_type = features.device.type
    compute_dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else features.dtype
    with torch.autocast(device_type, enabled=False):  # the dtypes are chosen here, for forward and backward alike
        return _PrototypeCrossEntropy.apply(features, prototypes, targets, row_weights, student_temp, chunk, compute_dtype)


class _PrototypeCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features, prototypes, targets, row_weights, student_temp, chunk, compute_dtype):
        weight = prototypes.to(compute_dtype)
        loss = features.new_zeros((), dtype=torch.float32)
        log_sum_exps = []
        for start in range(0, features.shape[0], chunk):
            rows = slice(start, start + chunk)
            scaled = F.linear(features[rows].to(compute_dtype), weight).float().div_(student_temp)
            log_sum_exp = torch.logsumexp(scaled, dim=-1)
            part = targets[rows].float()
            entropy = log_sum_exp * part.sum(dim=-1) - (part * scaled).sum(dim=-1)
            loss = loss + (entropy * row_weights[rows].float()).sum()
            log_sum_exps.append(log_sum_exp)
        ctx.save_for_backward(features, prototypes, targets, row_weights, torch.cat(log_sum_exps) if log_sum_exps else loss.new_zeros(0))
        ctx.student_temp, ctx.chunk, ctx.compute_dtype = student_temp, chunk, compute_dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        features, prototypes, targets, row_weights, log_sum_exp = ctx.saved_tensors
        temp, dtype = ctx.student_temp, ctx.compute_dtype
        weight = prototypes.to(dtype)
        grad_features = torch.empty_like(features) if ctx.needs_input_grad[0] else None
        grad_prototypes = torch.zeros_like(prototypes, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        for start in range(0, features.shape[0], ctx.chunk):
            rows = slice(start, start + ctx.chunk)
            inputs = features[rows].to(dtype)
            scaled = F.linear(inputs, weight).float().div_(temp)
            part = targets[rows].float()
            # G = w (p Σt − t) / τ · ∂loss, built in place on the chunk's logits
            probs = scaled.sub_(log_sum_exp[rows].unsqueeze(1)).exp_()
            grad = probs.mul_(part.sum(dim=-1, keepdim=True)).sub_(part)
            grad = grad.mul_((row_weights[rows].float() * grad_loss / temp).unsqueeze(1)).to(dtype)
            if grad_features is not None:
                grad_features[rows] = grad @ weight
            if grad_prototypes is not None:
                grad_prototypes += (grad.t() @ inputs).float()
        if grad_prototypes is not None:
            grad_prototypes = grad_prototypes.to(prototypes.dtype)
        return grad_features, grad_prototypes, None, None, None, None, None
