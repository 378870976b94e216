"""What every vla_dino manipulation env shares: the observation convention and MuJoCo cameras.

Observation convention (all envs):
    obs = {"pixels": {camera_name: uint8 (H, W, 3)}, "agent_pos": float32 (D,)}
    info["is_success"]: bool on every reset/step
    info["state"]: {name: float32 array} simulator state for probes (object/gripper poses)

Images are the right way up: row 0 is the top of the picture as a person would see it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces


def observation_space(cameras: Sequence[str], image_size: tuple[int, int], agent_dim: int) -> spaces.Dict:
    """The Dict space of the shared convention; `image_size` is (height, width)."""
    height, width = image_size
    pixels = spaces.Dict({name: spaces.Box(0, 255, (height, width, 3), np.uint8) for name in cameras})
    agent = spaces.Box(-np.inf, np.inf, (agent_dim,), np.float32)
    return spaces.Dict({"pixels": pixels, "agent_pos": agent})


def as_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    """`96` → (96, 96); `(h, w)` kept; anything else is an error naming the argument."""
    if isinstance(image_size, int):
        size = (image_size, image_size)
    else:
        size = tuple(int(s) for s in image_size)
    if len(size) != 2 or min(size) < 8:
        raise ValueError(f"image_size={image_size!r}; expected an int or (height, width) of at least 8 px")
    return size  # type: ignore[return-value]


def float_state(**arrays: Any) -> dict[str, np.ndarray]:
    """Named simulator quantities as float32 1-D arrays (the `info["state"]` format)."""
    return {name: np.atleast_1d(np.asarray(value, dtype=np.float32)).copy() for name, value in arrays.items()}


def set_fast_render(model: mujoco.MjModel) -> None:
    """CPU rendering ~7x faster (measured with llvmpipe EGL at 224², ~10 → ~70 steps/s): no multisampling, no shadows, no reflections."""
    model.vis.quality.offsamples = 0
    model.light_castshadow[:] = 0
    model.mat_reflectance[:] = 0


@dataclass(frozen=True)
class FreeCamera:
    """A MuJoCo free camera (orbit around `lookat`), for models without a good fixed camera."""

    lookat: tuple[float, float, float]
    distance: float
    azimuth: float
    elevation: float

    def to_mjv(self) -> mujoco.MjvCamera:
        camera = mujoco.MjvCamera()
        camera.type = mujoco.mjtCamera.mjCAMERA_FREE
        camera.lookat[:] = self.lookat
        camera.distance, camera.azimuth, camera.elevation = self.distance, self.azimuth, self.elevation
        return camera


class MujocoCameras:
    """Renders named cameras of a MuJoCo model with `mujoco.Renderer` (fast settings applied).

    `flipped` lists cameras whose raw picture is upside down (Meta-World's `corner*`): both axes are
    flipped so the returned frames are upright. `project` maps world points to the pixel of the
    returned frame (used by orientation tests and for debugging camera placement).
    """

    def __init__(
        self,
        model: mujoco.MjModel,
        cameras: dict[str, str | FreeCamera],
        image_size: tuple[int, int],
        flipped: Sequence[str] = (),
    ) -> None:
        for name, camera in cameras.items():
            if isinstance(camera, str) and mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera) < 0:
                known = [model.camera(i).name for i in range(model.ncam)]
                raise ValueError(f"camera {name!r} → {camera!r} is not in the model; known cameras: {known}")
        set_fast_render(model)
        height, width = image_size
        model.vis.global_.offheight = max(model.vis.global_.offheight, height)
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, width)
        self.model = model
        self.image_size = image_size
        self.cameras = {n: (c.to_mjv() if isinstance(c, FreeCamera) else c) for n, c in cameras.items()}
        self.flipped = set(flipped)
        self._renderer: mujoco.Renderer | None = None  # created lazily: after fork in vector envs

    @property
    def renderer(self) -> mujoco.Renderer:
        if self._renderer is None:
            self._renderer = mujoco.Renderer(self.model, *self.image_size)
        return self._renderer

    def render(self, data: mujoco.MjData) -> dict[str, np.ndarray]:
        return {name: self.render_camera(data, name) for name in self.cameras}

    def render_camera(self, data: mujoco.MjData, name: str) -> np.ndarray:
        """One camera's frame, upright, in the renderer's current mode (RGB, depth or segmentation)."""
        self.renderer.update_scene(data, self.cameras[name])
        frame = self.renderer.render()
        return np.ascontiguousarray(frame[::-1, ::-1] if name in self.flipped else frame)

    def project(self, data: mujoco.MjData, camera_name: str, point: Sequence[float]) -> tuple[float, float]:
        """(row, col) of world `point` in the frame `render` returns for `camera_name`.

        Pinhole model of MuJoCo's OpenGL camera (`mjvGLCamera`: position, forward, up, frustum at the
        near plane); rows count from the top. A mono render sees from the average of the scene's two
        eye cameras (each sits ipd/2 to one side), as `mjr_render` does.
        """
        self.renderer.update_scene(data, self.cameras[camera_name])
        gl = mujoco.mjv_averageCamera(self.renderer.scene.camera[0], self.renderer.scene.camera[1])
        forward, up = np.asarray(gl.forward), np.asarray(gl.up)
        right = np.cross(forward, up)
        offset = np.asarray(point, dtype=np.float64) - np.asarray(gl.pos)
        depth = offset @ forward
        if depth <= 0:
            raise ValueError(f"point {tuple(point)} is behind camera {camera_name!r}")
        x, y = (offset @ right) * gl.frustum_near / depth, (offset @ up) * gl.frustum_near / depth
        height, width = self.image_size
        half_width = gl.frustum_width or (gl.frustum_top - gl.frustum_bottom) / 2 * width / height
        col = (x - (gl.frustum_center - half_width)) / (2 * half_width) * width
        row = (gl.frustum_top - y) / (gl.frustum_top - gl.frustum_bottom) * height
        if camera_name in self.flipped:
            row, col = height - row, width - col
        return float(row), float(col)

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None


class ManipulationEnv(gym.Env):
    """Base of our envs: the shared spaces, `is_success`/`state` in every info, episode seeding.

    Subclasses implement `_reset_sim(seed) -> None`, `_step_sim(action) -> (reward, success)`,
    `_render() -> {camera: frame}`, `_agent_pos() -> array`, `state() -> {name: array}`.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}
    task_description: str = ""

    def __init__(
        self,
        cameras: Sequence[str],
        image_size: tuple[int, int],
        agent_dim: int,
        terminate_on_success: bool,
        render_mode: str | None = "rgb_array",
    ):
        super().__init__()
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode={render_mode!r}; these envs render 'rgb_array' only")
        if not cameras:
            raise ValueError("cameras is empty; expected at least one camera name")
        self.camera_names = list(cameras)
        self.image_size = image_size
        self.render_mode = "rgb_array"
        self.terminate_on_success = terminate_on_success
        self.observation_space = observation_space(self.camera_names, image_size, agent_dim)
        self._last_frames: dict[str, np.ndarray] | None = None

    # ---------------------------------------------------------------- subclass hooks
    def _reset_sim(self, seed: int) -> None:
        raise NotImplementedError

    def _step_sim(self, action: np.ndarray) -> tuple[float, bool]:
        raise NotImplementedError

    def _render(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _agent_pos(self) -> np.ndarray:
        raise NotImplementedError

    def state(self) -> dict[str, np.ndarray]:
        """Simulator state for probes: {name: float32 array}."""
        raise NotImplementedError

    # ---------------------------------------------------------------- gymnasium API
    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        # One integer per episode from the env's own RNG: reset(seed=s) fixes the episode, and
        # later resets without a seed continue a reproducible sequence.
        self._reset_sim(int(self.np_random.integers(2**31 - 1)))
        return self._observation(), self._info(False)

    def step(self, action: Any) -> tuple[dict, float, bool, bool, dict]:
        action = np.asarray(action, dtype=np.float32)
        if action.shape != self.action_space.shape:
            raise ValueError(f"action shape {action.shape}; expected {self.action_space.shape}")
        reward, success = self._step_sim(action)
        terminated = bool(success and self.terminate_on_success)
        return self._observation(), float(reward), terminated, False, self._info(success)

    def render(self) -> np.ndarray:
        """The first camera's latest frame (what videos show)."""
        if self._last_frames is None:
            self._last_frames = self._render()
        return self._last_frames[self.camera_names[0]]

    def _observation(self) -> dict:
        self._last_frames = self._render()
        return {"pixels": dict(self._last_frames), "agent_pos": np.asarray(self._agent_pos(), dtype=np.float32)}

    def _info(self, success: bool) -> dict:
        return {"is_success": bool(success), "state": self.state()}
