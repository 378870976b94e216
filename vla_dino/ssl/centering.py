"""Teacher targets: Sinkhorn-Knopp (SwAV / DINOv2) or softmax with an EMA centre (DINO).

Both compute in fp32 and all-reduce their sums across ranks, so targets on N ranks equal
the targets of one process holding the concatenated batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vla_dino.ssl.dist import all_reduce_max, all_reduce_sum


@torch.no_grad()
def sinkhorn_knopp(logits: torch.Tensor, temperature: float, iterations: int = 3) -> torch.Tensor:
    """Sinkhorn-Knopp targets (B, K) for teacher logits (B, K), B summed over ranks.

    Q = exp(t / τ)ᵀ (K × B), Q ← Q / ΣQ, then `iterations` times:
    rows ← rows / (K · row sums) (every prototype gets mass 1/K),
    columns ← columns / (B · column sums) (every sample gets mass 1/B); return B·Qᵀ
    (each row a distribution). Row sums and B are all-reduced. The global max is
    subtracted first (exact after normalisation, avoids fp32 overflow at small τ); cosine
    logits in [−1, 1] stay clear of underflow for τ ≥ 0.012.

    Computed as Q = diag(u) E diag(v) with E = exp(t / τ − max)ᵀ and two scaling vectors: each
    normalisation rescales u or v, and a row or column sum of Q is a matrix-vector product with E
    (u ⊙ E v, v ⊙ Eᵀ u). E is read twice per iteration and written once at the end, where upstream's
    loop (dinov2/loss/dino_clstoken_loss.py) reads and writes the whole B × K matrix four times per
    iteration; for iBOT's masked patches at K = 65536 that matrix is a gigabyte.

    Collectives: one max, then one sum per iteration. Q / ΣQ is a common factor that the first
    row normalisation removes exactly, so it is skipped, and B travels in the first row-sum
    all-reduce (upstream spends two more all-reduces on them).
    """
    if iterations < 1:
        raise ValueError(f"sinkhorn_knopp: iterations={iterations}; expected at least 1")
    scaled = logits.float() / temperature  # (B, K), a new tensor: E is computed in place
    peak = scaled.max() if scaled.numel() else scaled.new_full((), float("-inf"))
    peak = all_reduce_max(peak.clone())
    exp = scaled.sub_(peak).exp_()
    num_prototypes = exp.shape[1]
    col_scale = exp.new_ones(exp.shape[0])  # v: one per sample
    # first row sums (u = 1, v = 1) with B appended, then B from it
    first = all_reduce_sum(torch.cat([exp.sum(dim=0), exp.new_full((1,), exp.shape[0])]))  # new_full: no host copy
    row_sums, num_samples = first[:-1], first[-1]
    row_scale = exp.new_ones(num_prototypes)  # u: one per prototype
    for iteration in range(iterations):
        if iteration:
            row_sums = all_reduce_sum(row_scale * (col_scale @ exp))  # Σ_b v_b E_bk u_k
        row_scale = row_scale / (row_sums * num_prototypes)
        col_sums = col_scale * (exp @ row_scale)  # Σ_k v_b E_bk u_k, this rank's samples
        col_scale = col_scale / (col_sums * num_samples)
    return exp.mul_(row_scale).mul_((col_scale * num_samples).unsqueeze(1))


class SoftmaxCenter(nn.Module):
    """DINO's centring: targets softmax((t − c) / τ); c ← m·c + (1 − m)·mean(t) after each call,
    the mean taken over all rows on all ranks. `revert_if(skip)` takes the last call's update back
    when a device flag says the step was skipped (non-finite), so a skipped step leaves c as it was."""

    center: torch.Tensor

    def __init__(self, dim: int, momentum: float = 0.9) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("center", torch.zeros(1, dim))
        self._before: torch.Tensor | None = None  # the centre before the last call's update

    @torch.no_grad()
    def forward(self, logits: torch.Tensor, temperature: float) -> torch.Tensor:
        logits = logits.float()
        targets = F.softmax((logits - self.center) / temperature, dim=-1)
        self._before = self.center.clone()
        self.update(logits)
        return targets

    @torch.no_grad()
    def revert_if(self, skip: torch.Tensor) -> None:
        """Undo the last call's update where `skip` (a bool device tensor) is True; no host read."""
        if self._before is not None:
            self.center.copy_(torch.where(skip, self._before, self.center))
            self._before = None

    @torch.no_grad()
    def update(self, logits: torch.Tensor) -> None:
        stats = torch.cat([logits.float().sum(dim=0), logits.new_full((1,), logits.shape[0], dtype=torch.float32)])
        stats = all_reduce_sum(stats)
        count = stats[-1].clamp(min=1.0)
        batch_center = (stats[:-1] / count).unsqueeze(0)
        has_rows = (stats[-1] > 0).float()  # keep the centre when no rank had rows (no masked patches)
        momentum = 1.0 - (1.0 - self.momentum) * has_rows
        self.center.mul_(momentum).add_((1.0 - momentum) * batch_center)


class TeacherTargets(nn.Module):
    """Teacher logits → target distributions with the configured centering."""

    def __init__(self, dim: int, centering: str, center_momentum: float = 0.9, sinkhorn_iterations: int = 3) -> None:
        super().__init__()
        if centering not in ("sinkhorn", "softmax"):
            raise ValueError(f"centering {centering!r}; expected 'sinkhorn' or 'softmax'")
        self.centering = centering
        self.sinkhorn_iterations = sinkhorn_iterations
        self.softmax_center = SoftmaxCenter(dim, center_momentum) if centering == "softmax" else None

    @torch.no_grad()
    def forward(self, logits: torch.Tensor, temperature: float) -> torch.Tensor:
        if self.softmax_center is None:
            return sinkhorn_knopp(logits, temperature, self.sinkhorn_iterations)
        return self.softmax_center(logits, temperature)

    def revert_if(self, skip: torch.Tensor) -> None:
        """Softmax centring: undo the last call's centre update when `skip` is True (Sinkhorn-Knopp keeps no state)."""
        if self.softmax_center is not None:
            self.softmax_center.revert_if(skip)

    def center_norm(self) -> torch.Tensor:
        if self.softmax_center is None:
            return torch.zeros(())
        return self.softmax_center.center.norm()
