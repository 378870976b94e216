"""LeRobot env types for our envs, so `lerobot-eval --env.type=vla_dino_metaworld --env.task=push-v3`
(and `vla_dino_pusht`, `vla_dino_fetch`) build them.

LeRobot's rollout maps our observation dict onto policy keys by itself (`preprocess_observation`):
`pixels/<cam>` → `observation.images.<cam>`, `agent_pos` → `observation.state`; `features` and
`features_map` below declare the same so `env_to_policy_features` gives the policy's input features.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from lerobot.configs import FeatureType, PolicyFeature
from lerobot.envs.configs import EnvConfig
from lerobot.utils.constants import ACTION, OBS_IMAGES, OBS_STATE

from lerobot_env_vla_dino.registration import FETCH_IDS, NAMESPACE, metaworld_id


@dataclass
class _VlaDinoEnvConfig(EnvConfig):
    """Shared fields; subclasses set `action_dim`, `state_dim`, default cameras and `gym_id`."""

    cameras: str = ""  # comma-separated camera names
    image_size: int = 96
    episode_length: int | None = None  # None: the registered limit
    terminate_on_success: bool = True
    action_dim: ClassVar[int] = 0
    state_dim: ClassVar[int] = 0

    def __post_init__(self) -> None:
        self.features = {
            ACTION: PolicyFeature(type=FeatureType.ACTION, shape=(self.action_dim,)),
            "agent_pos": PolicyFeature(type=FeatureType.STATE, shape=(self.state_dim,)),
        }
        self.features_map = {ACTION: ACTION, "agent_pos": OBS_STATE}
        for camera in self.camera_list:
            key = f"pixels/{camera}"
            self.features[key] = PolicyFeature(type=FeatureType.VISUAL, shape=(self.image_size, self.image_size, 3))
            self.features_map[key] = f"{OBS_IMAGES}.{camera}"

    @property
    def camera_list(self) -> list[str]:
        cameras = [c.strip() for c in self.cameras.split(",") if c.strip()]
        if not cameras:
            raise ValueError(f"--env.cameras={self.cameras!r}; expected comma-separated camera names")
        return cameras

    @property
    def package_name(self) -> str:
        return "lerobot_env_vla_dino"

    @property
    def gym_kwargs(self) -> dict:
        kwargs = dict(
            cameras=tuple(self.camera_list), image_size=self.image_size, terminate_on_success=self.terminate_on_success
        )
        if self.episode_length is not None:
            kwargs["max_episode_steps"] = self.episode_length
        return kwargs


@EnvConfig.register_subclass("vla_dino_metaworld")
@dataclass
class VlaDinoMetaWorldEnvConfig(_VlaDinoEnvConfig):
    task: str | None = "push-v3"
    fps: int = 80
    cameras: str = "corner"
    action_dim: ClassVar[int] = 4
    state_dim: ClassVar[int] = 4

    @property
    def gym_id(self) -> str:
        return metaworld_id(self.task)


@EnvConfig.register_subclass("vla_dino_pusht")
@dataclass
class VlaDinoPushTEnvConfig(_VlaDinoEnvConfig):
    task: str | None = "PushT-v0"
    fps: int = 10
    cameras: str = "top"
    action_dim: ClassVar[int] = 2
    state_dim: ClassVar[int] = 2

    @property
    def gym_id(self) -> str:
        return f"{NAMESPACE}/{self.task}"


@EnvConfig.register_subclass("vla_dino_fetch")
@dataclass
class VlaDinoFetchEnvConfig(_VlaDinoEnvConfig):
    task: str | None = "reach"  # reach, push, pick_and_place, slide
    fps: int = 25
    cameras: str = "front"
    action_dim: ClassVar[int] = 4
    state_dim: ClassVar[int] = 5

    @property
    def gym_id(self) -> str:
        if self.task not in FETCH_IDS:
            raise ValueError(f"--env.task={self.task!r}; expected one of {sorted(FETCH_IDS)}")
        return f"{NAMESPACE}/{FETCH_IDS[self.task]}"
