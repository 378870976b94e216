"""What a policy expects as one raw observation, and validation of observations against it.

Raw observations are what a robot computer has at hand, before any LeRobot processing:
camera images as ``uint8`` arrays ``(H, W, 3)`` in RGB order, and every other input
(``observation.state``, ``observation.environment_state``) as ``float32`` vectors. The
runtime converts them to LeRobot's batch format itself (images ``float32 (1, 3, H, W)``
in [0, 1], as ``lerobot.policies.utils.prepare_observation_for_inference`` does).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from lerobot.configs.policies import PreTrainedConfig
from lerobot.configs.types import FeatureType


class ObservationError(ValueError):
    """An observation does not match the policy's input spec (message names the key and what was expected)."""


@dataclass(frozen=True)
class ArraySpec:
    name: str
    dtype: str  # numpy dtype name, always little-endian on the wire
    shape: tuple[int, ...]
    is_image: bool

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize

    def to_json(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "is_image": self.is_image}


@dataclass(frozen=True)
class PolicySpec:
    """Inputs and outputs of a loaded policy, in raw (robot-side) layout."""

    policy_type: str
    inputs: tuple[ArraySpec, ...]
    action_dim: int
    chunk_size: int

    @classmethod
    def from_config(cls, config: PreTrainedConfig, chunk_size: int) -> PolicySpec:
        inputs = []
        for name, feature in config.input_features.items():
            if feature.type == FeatureType.VISUAL:
                c, h, w = feature.shape
                if c != 3:
                    raise ValueError(f"input feature '{name}': expected 3-channel images (3, H, W), got {feature.shape}")
                inputs.append(ArraySpec(name, "uint8", (h, w, 3), is_image=True))
            elif feature.type == FeatureType.LANGUAGE:
                continue  # language comes as the `task` string
            else:
                inputs.append(ArraySpec(name, "float32", tuple(feature.shape), is_image=False))
        (action_feature,) = [f for f in config.output_features.values() if f.type == FeatureType.ACTION]
        return cls(config.type, tuple(inputs), int(action_feature.shape[0]), int(chunk_size))

    @property
    def camera_names(self) -> list[str]:
        return [s.name for s in self.inputs if s.is_image]

    @property
    def input_nbytes(self) -> int:
        return sum(s.nbytes for s in self.inputs)

    def validate(self, observation: Mapping[str, object]) -> None:
        """Raise :class:`ObservationError` unless ``observation`` has exactly the expected arrays."""
        expected = {s.name: s for s in self.inputs}
        missing = sorted(set(expected) - set(observation))
        unknown = sorted(set(observation) - set(expected))
        if missing or unknown:
            raise ObservationError(
                f"observation keys do not match the policy: missing {missing}, unknown {unknown}; "
                f"expected exactly {sorted(expected)}"
            )
        for name, spec in expected.items():
            value = observation[name]
            if not isinstance(value, np.ndarray):
                raise ObservationError(f"'{name}': expected a numpy array, got {type(value).__name__}")
            if value.dtype.newbyteorder("=") != np.dtype(spec.dtype):
                raise ObservationError(f"'{name}': expected dtype {spec.dtype}, got {value.dtype}")
            if tuple(value.shape) != spec.shape:
                what = "(H, W, 3) RGB image" if spec.is_image else "vector"
                raise ObservationError(f"'{name}': expected shape {spec.shape} {what}, got {tuple(value.shape)}")
            if not spec.is_image and not np.isfinite(value).all():
                raise ObservationError(f"'{name}': contains NaN or inf")

    def to_json(self) -> dict:
        return {
            "policy_type": self.policy_type,
            "inputs": [s.to_json() for s in self.inputs],
            "action_dim": self.action_dim,
            "chunk_size": self.chunk_size,
        }
