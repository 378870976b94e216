"""Gymnasium manipulation envs (Meta-World v3, PushT, Fetch) in one observation convention, scripted
experts, demo collection into LeRobotDatasets, a rollout evaluator, probes and a frozen-encoder
benchmark for vla_dino.

Importing this package registers the gymnasium ids (`vla_dino/MetaWorld-<task>`, `vla_dino/PushT-v0`,
`vla_dino/Fetch*-v0`) and the LeRobot env types (`--env.type=vla_dino_metaworld|vla_dino_pusht|
vla_dino_fetch`); LeRobot imports it at start-up because the distribution is named `lerobot_env_*`.

MuJoCo renders headless through EGL unless `MUJOCO_GL` is already set (it is read when mujoco is
first imported, so set it before importing mujoco yourself if you want another backend).
"""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

from lerobot_env_vla_dino.registration import ENV_IDS, metaworld_id
from lerobot_env_vla_dino import lerobot_config  # noqa: F401  (registers the LeRobot env types)

__all__ = ["ENV_IDS", "metaworld_id"]
