"""Meta-World v3 (any of its 50 tasks) in the shared observation convention.

Seeding: Meta-World ignores `reset(seed=)` once a task is set. We build the task once
(`metaworld.MT1(name, seed=0)`, `set_task`) and then draw each episode's object/goal
randomisation (`rand_vec`) from the env's own RNG seeded per episode (`seeded_rand_vec`), so
every episode seed gives one reproducible scene and distinct seeds give distinct scenes.
"""

from __future__ import annotations

from typing import Sequence

import metaworld
import mujoco
import numpy as np
from gymnasium import spaces

from lerobot_env_vla_dino.common import ManipulationEnv, MujocoCameras, as_size, float_state

TASK_NAMES: list[str] = list(metaworld.MT1.ENV_NAMES)
# Meta-World's corner cameras render upside down (metaworld 3.1.1 assets, mujoco 3.3.0): flip both axes.
FLIPPED_CAMERAS = ("corner", "corner2", "corner3", "corner4")


def task_description(task: str) -> str:
    """'pick-place-wall-v3' → 'pick place wall'."""
    return task.removesuffix("-v3").replace("-", " ")


class MetaWorldEnv(ManipulationEnv):
    """Meta-World v3 task `task` (e.g. 'reach-v3'); actions (dx, dy, dz, grip) in [-1, 1].

    `agent_pos` = hand xyz + gripper opening (as LeRobot's Meta-World env); `state()` adds the
    object pose and the goal. Episodes end on success (`terminate_on_success`) or after
    `max_episode_steps` (registration's TimeLimit; Meta-World's own limit is 500).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 80}

    def __init__(
        self,
        task: str = "reach-v3",
        cameras: Sequence[str] = ("corner",),
        image_size: int | Sequence[int] = 96,
        terminate_on_success: bool = True,
        render_mode: str | None = "rgb_array",
    ) -> None:
        if task not in TASK_NAMES:
            raise ValueError(f"unknown Meta-World task {task!r}; expected one of {TASK_NAMES}")
        super().__init__(cameras, as_size(image_size), 4, terminate_on_success, render_mode)
        self.task = task
        self.task_description = task_description(task)
        benchmark = metaworld.MT1(task, seed=0)
        self.sim = benchmark.train_classes[task]()
        self.sim.set_task(benchmark.train_tasks[0])
        self.sim._freeze_rand_vec = False
        self.sim.seeded_rand_vec = True
        self.sim.max_path_length = 10**9  # our TimeLimit decides; Meta-World raises past its own limit
        self.action_space = spaces.Box(-1.0, 1.0, (4,), np.float32)
        self.cameras = MujocoCameras(
            self.sim.model, {name: name for name in self.camera_names}, self.image_size, flipped=FLIPPED_CAMERAS
        )
        self.raw_obs = np.zeros(39)  # Meta-World's full 39-d observation; scripted experts read it

    def _reset_sim(self, seed: int) -> None:
        self.sim.seed(seed)
        self.sim.reset()
        # Some tasks' reset_model move bodies through the model (drawer-open-v3 sets
        # `model.body("drawer").pos` after `_reset_hand`'s last mj_step, metaworld 3.1.1
        # envs/sawyer_drawer_open_v3.py), so data.xpos and the observation built from it still
        # show the previous episode until the next step. Recompute the state, then rebuild the
        # observation the way SawyerXYZEnv.reset lays it out (current obs stacked twice + goal).
        mujoco.mj_forward(self.sim.model, self.sim.data)
        self.sim._prev_obs = self.sim._get_curr_obs_combined_no_goal()
        self.raw_obs = np.asarray(self.sim._get_obs(), dtype=np.float64)

    def _step_sim(self, action: np.ndarray) -> tuple[float, bool]:
        self.raw_obs, reward, _, _, info = self.sim.step(np.clip(action, -1.0, 1.0))
        return float(reward), bool(info["success"])

    def _render(self) -> dict[str, np.ndarray]:
        return self.cameras.render(self.sim.data)

    def _agent_pos(self) -> np.ndarray:
        return self.raw_obs[:4]

    def state(self) -> dict[str, np.ndarray]:
        obs = self.raw_obs
        return float_state(
            hand_pos=obs[0:3], gripper_opening=obs[3], obj_pos=obs[4:7], obj_quat=obs[7:11], goal_pos=obs[36:39]
        )

    def project(self, camera: str, point: Sequence[float]) -> tuple[float, float]:
        """(row, col) of a world point in this env's frames of `camera`."""
        return self.cameras.project(self.sim.data, camera, point)

    def close(self) -> None:
        self.cameras.close()
        self.sim.close()
