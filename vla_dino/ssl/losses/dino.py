"""DINO's self-distillation cross-entropy over crops, computed in fp32."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy(student_logits: torch.Tensor, targets: torch.Tensor, student_temp: float) -> torch.Tensor:
    """Row-wise H(t, s) = −Σ_k t_k · log_softmax(s / τ_s)_k, fp32, shape (…,)."""
    log_probs = F.log_softmax(student_logits.float() / student_temp, dim=-1)
    return -(targets.float() * log_probs).sum(dim=-1)


def dino_loss(
    student_global: torch.Tensor,
    student_local: torch.Tensor | None,
    teacher_targets: torch.Tensor,
    student_temp: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DINOv2's CLS loss, split into its local and global parts.

    Inputs are crop-major: `student_global` (2B, K) = [crop A; crop B], `student_local`
    (L·B, K), `teacher_targets` (2B, K) = targets of the teacher's crops [A; B]. With
    H̄(s, t) = mean over the B images of H(t, s):

        local  = Σ_{l=1..L} Σ_{g∈{A,B}} H̄(s_l, t_g) / (2L + 2)
        global = (H̄(s_A, t_B) + H̄(s_B, t_A)) / (2L + 2)

    so local + global is the mean over the 2L + 2 cross-view terms. The local sum uses
    Σ_l Σ_g t_g·log p_l = (Σ_g t_g)·(Σ_l log p_l) per image: one product instead of 2L.
    Per-rank means; DDP's gradient averaging makes the N-rank step equal the 1-rank step.
    """
    two_b, num_prototypes = student_global.shape
    if two_b % 2:
        raise ValueError(f"student_global has {two_b} rows; expected 2B (two global crops, crop-major)")
    batch = two_b // 2
    num_local = 0 if student_local is None else student_local.shape[0] // batch
    terms = 2 * num_local + 2
    targets = teacher_targets.float().view(2, batch, num_prototypes)
    swapped = targets.flip(0).reshape(two_b, num_prototypes)  # crop A learns from teacher B and vice versa
    global_loss = cross_entropy(student_global, swapped, student_temp).sum() / batch / terms
    if num_local == 0:
        return global_loss.new_zeros(()), global_loss
    if student_local.shape[0] != num_local * batch:
        raise ValueError(f"student_local has {student_local.shape[0]} rows; expected L·B with B = {batch}")
    log_probs = F.log_softmax(student_local.float() / student_temp, dim=-1).view(num_local, batch, num_prototypes)
    local_loss = -(targets.sum(0) * log_probs.sum(0)).sum() / batch / terms
    return local_loss, global_loss
