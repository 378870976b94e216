"""iBOT's masked-patch loss with DINOv2's per-image weighting."""

from __future__ import annotations

import torch

from vla_dino.ssl.losses.prototypes import prototype_cross_entropy


def masked_patch_weights(masks: torch.Tensor, mask_index: torch.Tensor | None = None) -> torch.Tensor:
    """For every masked patch (in `masks.nonzero()` order) the weight 1 / n_masked(its image).
    `mask_index`: `masks.flatten().nonzero()` when the caller has it (`MultiCropBatch.mask_index`, made on
    the host): `nonzero` of a GPU tensor waits for the GPU."""
    if mask_index is None:
        mask_index = masks.flatten().nonzero().squeeze(1)
    per_image = 1.0 / masks.sum(dim=-1, dtype=torch.float32).clamp(min=1.0)
    return per_image.unsqueeze(-1).expand_as(masks).reshape(-1).index_select(0, mask_index)


def ibot_loss(
    student_features: torch.Tensor, prototypes: torch.Tensor, targets: torch.Tensor, masks: torch.Tensor,
    student_temp: float, mask_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """L_iBOT = (1 / N_img) Σ_i (1 / n_i) Σ_{p masked in i} H(t_p, s_p),  s_p = softmax(f_p · Pᵀ / τ).

    `student_features` (M, d): the student head's normalised bottleneck at the M masked patches of `masks`
    (N_img, P), in row-major `masks.nonzero()` order; `prototypes` (K, d): the head's normalised last layer;
    `targets` (M, K). The (M, K) student logits are never stored (`prototype_cross_entropy`). Images without a
    mask count in N_img with 0 loss (as upstream, which divides by all global crops).
    """
    weights = masked_patch_weights(masks, mask_index)
    if weights.shape[0] != student_features.shape[0]:
        raise ValueError(f"{student_features.shape[0]} masked-patch features for {weights.shape[0]} masked patches")
    return prototype_cross_entropy(student_features, prototypes, targets, student_temp, weights) / masks.shape[0]
