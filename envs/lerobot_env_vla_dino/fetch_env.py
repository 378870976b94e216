"""Fetch (gymnasium-robotics: Reach, Push, PickAndPlace, Slide) in the shared observation convention.

The goal (red sphere) is drawn in the picture, so a policy sees what to do; `agent_pos` is the
gripper position and finger widths. Rendering uses a closer free camera than gymnasium-robotics'
default so that the 5 cm block is visible at low resolution.
"""

from __future__ import annotations

from typing import Sequence

import gymnasium as gym
import gymnasium_robotics
import numpy as np

from lerobot_env_vla_dino.common import FreeCamera, ManipulationEnv, MujocoCameras, as_size, float_state

gym.register_envs(gymnasium_robotics)

TASKS: dict[str, str] = {
    "reach": "FetchReach-v4",
    "push": "FetchPush-v4",
    "pick_and_place": "FetchPickAndPlace-v4",
    "slide": "FetchSlide-v4",
}
DESCRIPTIONS = {
    "reach": "move the gripper to the red target",
    "push": "push the block to the red target",
    "pick_and_place": "pick up the block and place it at the red target",
    "slide": "slide the puck to the red target",
}
CAMERAS: dict[str, FreeCamera] = {
    # Facing the robot from across the table, looking down at the workspace.
    "front": FreeCamera(lookat=(1.3, 0.75, 0.45), distance=1.1, azimuth=180.0, elevation=-40.0),
    # From the robot's left, looking across the workspace.
    "side": FreeCamera(lookat=(1.3, 0.75, 0.45), distance=1.2, azimuth=90.0, elevation=-30.0),
}


class FetchEnv(ManipulationEnv):
    """Fetch task `task` in {reach, push, pick_and_place, slide}; action (dx, dy, dz, grip) in [-1, 1]."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 25}

    def __init__(
        self,
        task: str = "reach",
        cameras: Sequence[str] = ("front",),
        image_size: int | Sequence[int] = 96,
        terminate_on_success: bool = True,
        render_mode: str | None = "rgb_array",
    ) -> None:
        if task not in TASKS:
            raise ValueError(f"unknown Fetch task {task!r}; expected one of {sorted(TASKS)}")
        unknown = [c for c in cameras if c not in CAMERAS]
        if unknown:
            raise ValueError(f"unknown Fetch cameras {unknown}; expected names from {sorted(CAMERAS)}")
        super().__init__(cameras, as_size(image_size), 5, terminate_on_success, render_mode)
        self.task = task
        self.task_description = DESCRIPTIONS[task]
        self.sim = gym.make(TASKS[task], disable_env_checker=True).unwrapped
        self.action_space = self.sim.action_space
        self.cameras = MujocoCameras(self.sim.model, {c: CAMERAS[c] for c in cameras}, self.image_size)
        self.raw_obs: dict[str, np.ndarray] = {}  # gymnasium-robotics' goal dict; experts read it

    @property
    def has_object(self) -> bool:
        return bool(self.sim.has_object)

    def _reset_sim(self, seed: int) -> None:
        self.raw_obs, _ = self.sim.reset(seed=seed)

    def _step_sim(self, action: np.ndarray) -> tuple[float, bool]:
        self.raw_obs, reward, _, _, info = self.sim.step(np.clip(action, -1.0, 1.0))
        return float(reward), bool(info["is_success"])

    def _render(self) -> dict[str, np.ndarray]:
        self.sim._render_callback()  # moves the target marker to the current goal
        return self.cameras.render(self.sim.data)

    def _agent_pos(self) -> np.ndarray:
        obs = self.raw_obs["observation"]
        fingers = obs[9:11] if self.has_object else obs[3:5]
        return np.concatenate([obs[:3], fingers])

    def state(self) -> dict[str, np.ndarray]:
        obs = self.raw_obs["observation"]
        named = dict(gripper_pos=obs[:3], goal_pos=self.raw_obs["desired_goal"])
        if self.has_object:
            named.update(obj_pos=obs[3:6], obj_rot=obs[11:14])
        return float_state(**named)

    def project(self, camera: str, point: Sequence[float]) -> tuple[float, float]:
        """(row, col) of a world point in this env's frames of `camera`."""
        return self.cameras.project(self.sim.data, camera, point)

    def close(self) -> None:
        self.cameras.close()
        self.sim.close()
