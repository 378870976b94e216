"""Scripted Fetch experts: reach goes to the goal; push and pick-and-place approach, then move the block.

Actions are (dx, dy, dz, grip) in [-1, 1]; gymnasium-robotics scales dx..dz by 5 cm per step and
grip > 0 opens the fingers. Controllers are proportional: a = clip(gain · (target − gripper)).
"""

from __future__ import annotations

import numpy as np

GAIN = 10.0  # 1 / (5 cm): one step covers the error when it is below 5 cm
OPEN, CLOSE = 1.0, -1.0


def _move(gripper: np.ndarray, target: np.ndarray, grip: float) -> np.ndarray:
    return np.append(np.clip(GAIN * (target - gripper), -1.0, 1.0), grip).astype(np.float32)


def _over_then_down(gripper: np.ndarray, target: np.ndarray, grip: float, height: float) -> np.ndarray | None:
    """Move above `target` (+`height`), then down onto it, so the fingers never sweep through the
    block; None once there (within 1 cm)."""
    if np.linalg.norm(gripper[:2] - target[:2]) > 0.01:
        return _move(gripper, target + np.array([0.0, 0.0, height]), grip)
    if abs(gripper[2] - target[2]) > 0.01:
        return _move(gripper, target, grip)
    return None


class FetchExpert:
    """Phase machine per task. Slide has no expert: it needs a ballistic strike we do not script."""

    TASKS = ("reach", "push", "pick_and_place")

    def __init__(self, task: str) -> None:
        if task not in self.TASKS:
            raise ValueError(f"no scripted Fetch expert for task {task!r}; experts exist for {self.TASKS}")
        self.task = task
        self.reset()

    def reset(self) -> None:
        self._phase = "approach"
        self._grasp_steps = 0

    def __call__(self, env) -> np.ndarray:
        raw = env.unwrapped.raw_obs
        obs, goal = raw["observation"], raw["desired_goal"]
        gripper = obs[:3]
        if self.task == "reach":
            return _move(gripper, goal, 0.0)
        block = obs[3:6]
        if self.task == "push":
            return self._push(gripper, block, goal)
        return self._pick_and_place(gripper, block, goal)

    def _push(self, gripper: np.ndarray, block: np.ndarray, goal: np.ndarray) -> np.ndarray:
        direction = goal[:2] - block[:2]
        direction /= max(np.linalg.norm(direction), 1e-6)
        behind = np.append(block[:2] - 0.06 * direction, block[2])  # fingertips 6 cm behind the block centre
        if self._phase == "approach":
            action = _over_then_down(gripper, behind, CLOSE, height=0.08)
            if action is not None:
                return action
            self._phase = "push"
        # Push through the block centre towards the goal; re-align if the block slid sideways.
        if np.linalg.norm(np.cross(np.append(direction, 0), np.append(gripper[:2] - block[:2], 0))) > 0.02:
            self._phase = "approach"
        target = np.append(goal[:2] - 0.05 * direction, block[2])
        return _move(gripper, target, CLOSE)

    def _pick_and_place(self, gripper: np.ndarray, block: np.ndarray, goal: np.ndarray) -> np.ndarray:
        if self._phase == "approach":
            action = _over_then_down(gripper, block, OPEN, height=0.05)
            if action is not None:
                return action
            self._phase = "grasp"
        if self._phase == "grasp":
            self._grasp_steps += 1
            if self._grasp_steps < 4:  # let the fingers close before lifting
                return _move(gripper, block, CLOSE)
            self._phase = "carry"
        if np.linalg.norm(gripper - block) > 0.05:  # dropped it: start again
            self.reset()
            return _move(gripper, gripper + np.array([0.0, 0.0, 0.03]), OPEN)
        return _move(gripper, goal + (gripper - block), CLOSE)
