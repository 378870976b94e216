"""Teacher targets: Sinkhorn-Knopp (SwAV / DINOv2) or softmax with an EMA centre (DINO).

Both compute in fp32 and all-reduce their sums across ranks, so targets on N ranks equal
the targets of one process holding the concatenated batch. A step's heads (DINO's CLS rows,
iBOT's masked patches) are separate problems; `joint_targets` solves them side by side so that
each all-reduce carries every head's vector, and a step spends the collectives of one head.
"""

from __future__ import annotations

from collections.abc import Sequence

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
    return sinkhorn_knopp_joint([logits], temperature, iterations)[0]


@torch.no_grad()
def sinkhorn_knopp_joint(logits: Sequence[torch.Tensor], temperature: float, iterations: int = 3) -> list[torch.Tensor]:
    """`sinkhorn_knopp` of several independent problems (any B and K each) with shared collectives.

    Each problem is normalised on its own (its own max, B, row and column sums: the targets equal
    separate calls), and every all-reduce carries all problems' vectors concatenated, so the
    collectives are those of one call: one max, then one sum per iteration.
    """
    if iterations < 1:
        raise ValueError(f"sinkhorn_knopp: iterations={iterations}; expected at least 1")
    scaled = [part.float() / temperature for part in logits]  # new tensors: each E is computed in place
    empty_max = scaled[0].new_full((), float("-inf"))
    peaks = all_reduce_max(torch.stack([part.max() if part.numel() else empty_max for part in scaled]))
    exps = [part.sub_(peak).exp_() for part, peak in zip(scaled, peaks)]
    num_prototypes = [exp.shape[1] for exp in exps]
    # first row sums (u = 1, v = 1) with each B appended; new_full: no host copy
    first = all_reduce_sum(torch.cat([exp.sum(dim=0) for exp in exps] + [exp.new_full((1,), exp.shape[0]) for exp in exps]))
    *row_sums, num_samples = first.split(num_prototypes + [len(exps)])
    row_scales = [exp.new_ones(k) for exp, k in zip(exps, num_prototypes)]  # u: one per prototype
    col_scales = [exp.new_ones(exp.shape[0]) for exp in exps]  # v: one per sample
    for iteration in range(iterations):
        if iteration:  # Σ_b v_b E_bk u_k, all problems in one all-reduce
            row_sums = all_reduce_sum(torch.cat([u * (v @ exp) for exp, u, v in zip(exps, row_scales, col_scales)]))
            row_sums = row_sums.split(num_prototypes)
        row_scales = [u / (sums * k) for u, sums, k in zip(row_scales, row_sums, num_prototypes)]
        # Σ_k v_b E_bk u_k: this rank's samples, no collective
        col_scales = [v / (v * (exp @ u) * n) for exp, u, v, n in zip(exps, row_scales, col_scales, num_samples)]
    return [exp.mul_(u).mul_((v * n).unsqueeze(1)) for exp, u, v, n in zip(exps, row_scales, col_scales, num_samples)]


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
        targets = self.targets(logits, temperature)
        self.apply_stats(all_reduce_sum(self.local_stats(logits)))
        return targets

    @torch.no_grad()
    def targets(self, logits: torch.Tensor, temperature: float) -> torch.Tensor:
        """softmax((t − c) / τ) with the current centre; no update."""
        return F.softmax((logits.float() - self.center) / temperature, dim=-1)

    @torch.no_grad()
    def local_stats(self, logits: torch.Tensor) -> torch.Tensor:
        """This rank's row sum with its row count appended (dim + 1): what the update all-reduces."""
        return torch.cat([logits.float().sum(dim=0), logits.new_full((1,), logits.shape[0], dtype=torch.float32)])

    @torch.no_grad()
    def apply_stats(self, stats: torch.Tensor) -> None:
        """The EMA update from all-reduced `local_stats`; kept for `revert_if`."""
        self._before = self.center.clone()
        count = stats[-1].clamp(min=1.0)
        batch_center = (stats[:-1] / count).unsqueeze(0)
        has_rows = (stats[-1] > 0).float()  # keep the centre when no rank had rows (no masked patches)
        momentum = 1.0 - (1.0 - self.momentum) * has_rows
        self.center.mul_(momentum).add_((1.0 - momentum) * batch_center)

    @torch.no_grad()
    def revert_if(self, skip: torch.Tensor) -> None:
        """Undo the last call's update where `skip` (a bool device tensor) is True; no host read."""
        if self._before is not None:
            self.center.copy_(torch.where(skip, self._before, self.center))
            self._before = None


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
        return joint_targets([self], [logits], temperature)[0]

    def revert_if(self, skip: torch.Tensor) -> None:
        """Softmax centring: undo the last call's centre update when `skip` is True (Sinkhorn-Knopp keeps no state)."""
        if self.softmax_center is not None:
            self.softmax_center.revert_if(skip)

    def center_norm(self) -> torch.Tensor:
        if self.softmax_center is None:
            return torch.zeros(())
        return self.softmax_center.center.norm()


@torch.no_grad()
def joint_targets(heads: Sequence[TeacherTargets], logits: Sequence[torch.Tensor], temperature: float) -> list[torch.Tensor]:
    """Each head's targets for its teacher logits, as separate calls would give them, with the
    cross-rank sums of all heads in shared all-reduces (the heads must agree on centering)."""
    if len(heads) != len(logits) or not heads:
        raise ValueError(f"joint_targets: {len(heads)} heads for {len(logits)} logit tensors; expected one each")
    settings = {(head.centering, head.sinkhorn_iterations) for head in heads}
    if len(settings) > 1:
        raise ValueError(f"joint_targets: heads disagree on (centering, sinkhorn_iterations): {sorted(settings)}")
    if heads[0].softmax_center is None:
        return sinkhorn_knopp_joint(logits, temperature, heads[0].sinkhorn_iterations)
    centers = [head.softmax_center for head in heads]
    targets = [center.targets(part, temperature) for center, part in zip(centers, logits)]
    stats = all_reduce_sum(torch.cat([center.local_stats(part) for center, part in zip(centers, logits)]))
    for center, part_stats in zip(centers, stats.split([center.center.shape[1] + 1 for center in centers])):
        center.apply_stats(part_stats)
    return targets
