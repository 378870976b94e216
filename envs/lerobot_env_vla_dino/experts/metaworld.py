"""Meta-World's own scripted policies (`metaworld.policies`), one per v3 task."""

from __future__ import annotations

import metaworld.policies as mw_policies
import numpy as np

from lerobot_env_vla_dino.metaworld_env import TASK_NAMES

# Policy class names follow the task name except where Meta-World spells it differently.
_SPELLING = {"peg-insert-side-v3": "SawyerPegInsertionSideV3Policy"}


def policy_class_name(task: str) -> str:
    """'pick-place-wall-v3' → 'SawyerPickPlaceWallV3Policy'."""
    if task in _SPELLING:
        return _SPELLING[task]
    return "Sawyer" + "".join(word.capitalize() for word in task.removesuffix("-v3").split("-")) + "V3Policy"


POLICY_CLASSES: dict[str, type] = {task: getattr(mw_policies, policy_class_name(task)) for task in TASK_NAMES}


class MetaWorldExpert:
    """Calls Meta-World's policy for the env's task on its full 39-d observation."""

    def __init__(self, task: str) -> None:
        if task not in POLICY_CLASSES:
            raise ValueError(f"no Meta-World policy for task {task!r}; expected one of {sorted(POLICY_CLASSES)}")
        self.policy = POLICY_CLASSES[task]()

    def reset(self) -> None:
        """Meta-World's policies are stateless."""

    def __call__(self, env) -> np.ndarray:
        return np.asarray(self.policy.get_action(env.unwrapped.raw_obs), dtype=np.float32)
