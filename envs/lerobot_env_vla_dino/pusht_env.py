"""PushT (gym-pusht) in the shared observation convention.

The picture is gym-pusht's own top-down view (as in LeRobot's PushT datasets): pymunk's y axis
points down the image, so world (x, y) ∈ [0, 512]² is pixel (row = y·H/512, col = x·W/512).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from gym_pusht.envs.pusht import PushTEnv as _GymPushT

from lerobot_env_vla_dino.common import ManipulationEnv, as_size, float_state

WORKSPACE = 512.0


class PushTEnv(ManipulationEnv):
    """Push the grey T onto the green target; action = target (x, y) of the blue pusher in [0, 512]².

    Success: the T covers > 95% of the target (gym-pusht's criterion).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}
    task_description = "push the T-shaped block onto the target"

    def __init__(
        self,
        cameras: Sequence[str] = ("top",),
        image_size: int | Sequence[int] = 96,
        terminate_on_success: bool = True,
        render_mode: str | None = "rgb_array",
    ) -> None:
        if list(cameras) != ["top"]:
            raise ValueError(f"PushT has one camera, 'top'; got cameras={list(cameras)}")
        super().__init__(cameras, as_size(image_size), 2, terminate_on_success, render_mode)
        height, width = self.image_size
        self.sim = _GymPushT(obs_type="state", observation_width=width, observation_height=height)
        self.action_space = self.sim.action_space
        self.coverage = 0.0

    def _reset_sim(self, seed: int) -> None:
        self.sim.reset(seed=seed)
        self.coverage = float(self.sim._get_coverage())

    def _step_sim(self, action: np.ndarray) -> tuple[float, bool]:
        _, reward, _, _, info = self.sim.step(np.clip(action, 0.0, WORKSPACE))
        self.coverage = float(info["coverage"])
        return float(reward), bool(info["is_success"])

    def _render(self) -> dict[str, np.ndarray]:
        return {"top": np.ascontiguousarray(self.sim._render(visualize=False))}

    def _agent_pos(self) -> np.ndarray:
        return np.asarray(self.sim.agent.position)

    def state(self) -> dict[str, np.ndarray]:
        angle = float(self.sim.block.angle)
        return float_state(
            agent_pos=tuple(self.sim.agent.position),
            block_pos=tuple(self.sim.block.position),
            block_angle_cos_sin=(np.cos(angle), np.sin(angle)),
            coverage=self.coverage,
        )

    def goal_pose(self) -> np.ndarray:
        return np.asarray(self.sim.goal_pose, dtype=np.float64)

    def close(self) -> None:
        self.sim.close()
