"""Run health: collapse monitors and the NaN/inf guard."""

from __future__ import annotations

import math
from dataclasses import dataclass

from vla_dino.pretrain.config import CollapseConfig


class CollapseMonitor:
    """Flags the two DINO collapse modes from the objective's metrics.

    - constant features: the teacher's CLS features stop varying across the batch
      (`feature_std` → 0);
    - target collapse: teacher targets become one-hot on one prototype (`teacher_entropy` → 0)
      or uniform over all K prototypes (`teacher_entropy` → log K);
    plus a runaway centre (`center_norm`) when softmax centering is used, and near-uniform
    targets that the student already matches (entropy near log K with a flat student–teacher KL,
    `dino_kl`) persisting over `persist_checks` checks: no collapse of the features, but the
    objective then gives the backbone almost no signal.
    """

    def __init__(self, config: CollapseConfig, num_prototypes: int) -> None:
        self.config = config
        self.max_entropy = math.log(num_prototypes)
        self.flat_streak = 0

    def check(self, metrics: dict[str, float]) -> list[str]:
        c = self.config
        problems = []
        std = metrics.get("feature_std")
        if std is not None and std < c.min_feature_std:
            problems.append(f"feature_std {std:.4g} < {c.min_feature_std} (teacher features nearly constant across the batch)")
        entropy = metrics.get("teacher_entropy")
        if entropy is not None:
            if entropy < c.min_teacher_entropy:
                problems.append(f"teacher_entropy {entropy:.4g} < {c.min_teacher_entropy} nats (targets one-hot)")
            ceiling = c.max_teacher_entropy_fraction * self.max_entropy
            if entropy > ceiling:
                problems.append(
                    f"teacher_entropy {entropy:.4g} > {c.max_teacher_entropy_fraction:.2f}·log K = {ceiling:.4g} (targets uniform)"
                )
            kl = metrics.get("dino_kl")
            flat = kl is not None and entropy > c.near_uniform_fraction * self.max_entropy and kl < c.flat_kl
            self.flat_streak = self.flat_streak + 1 if flat else 0
            if self.flat_streak == c.persist_checks:
                problems.append(
                    f"teacher_entropy {entropy:.4g} > {c.near_uniform_fraction:.2f}·log K with student–teacher KL {kl:.3g} < "
                    f"{c.flat_kl} nats for {c.persist_checks} checks: near-uniform targets give the backbone almost no "
                    "signal (sharper ssl.schedules.teacher_temp, fewer ssl.heads.num_prototypes or more varied frames help)"
                )
        norm = metrics.get("center_norm")
        if norm is not None and norm > c.max_center_norm:
            problems.append(f"center_norm {norm:.4g} > {c.max_center_norm}")
        return problems


@dataclass
class NonFiniteGuard:
    """Counts consecutive non-finite steps; `should_stop` once `limit` are reached in a row."""

    limit: int
    streak: int = 0
    total: int = 0
    first_bad_step: int | None = None

    def record(self, finite: bool, step: int) -> None:
        if finite:
            self.streak, self.first_bad_step = 0, None
            return
        if self.streak == 0:
            self.first_bad_step = step
        self.streak += 1
        self.total += 1

    @property
    def should_stop(self) -> bool:
        return self.streak >= self.limit
