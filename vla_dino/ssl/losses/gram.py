"""DINOv3's Gram anchoring: keep the patch-similarity structure of a reference model."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gram_loss(student_patches: torch.Tensor, reference_patches: torch.Tensor, remove_negative: bool = False) -> torch.Tensor:
    """L_Gram = mean over images i and patch pairs (p, q) of (X̂_i X̂_iᵀ − Ŷ_i Ŷ_iᵀ)²_pq,
    X̂ / Ŷ = L2-normalised student / reference patch tokens (N_img, P, D), fp32.
    `remove_negative` clamps negative similarities to 0 in both matrices (DINOv3 option)."""
    if student_patches.shape[:2] != reference_patches.shape[:2]:
        raise ValueError(
            f"Gram: student patches {tuple(student_patches.shape)} vs reference {tuple(reference_patches.shape)}"
        )
    with torch.autocast(device_type=student_patches.device.type, enabled=False):
        x = F.normalize(student_patches.float(), dim=-1)
        y = F.normalize(reference_patches.float(), dim=-1)
        student_sim = x @ x.transpose(1, 2)
        reference_sim = y @ y.transpose(1, 2)
        if remove_negative:
            student_sim = student_sim.clamp(min=0)
            reference_sim = reference_sim.clamp(min=0)
        return F.mse_loss(student_sim, reference_sim)
