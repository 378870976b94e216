"""Visual changes made in the simulator (not image filters), and the dense ground truth its renderer gives.

`VisualCondition` describes a scene edit: light intensity and colour, a hue rotation and
saturation change of every material and geom colour, and a small camera pose jitter.
`SceneEditor` applies one to a MuJoCo model and restores the originals (`with editor.applied(c):`).
MuJoCo reads `model.mat_rgba`, `geom_rgba`, `light_diffuse` / `light_ambient` and the headlight at the
next render, so no recompilation is needed (MuJoCo docs, "mjModel": these fields are not used by
`mj_setConst`). `cam_pos` is read by `mj_forward` / `mj_step` (which compute `data.cam_xpos`, what the
renderer uses): give the editor the `data` to re-render the current state with a moved camera.

`DenseLabels` renders per-pixel depth (metres, `Renderer.enable_depth_rendering`) and a semantic
class map from the segmentation render (`Renderer.enable_segmentation_rendering`: int32
(H, W, 2) = (object id, object type), −1 where nothing is hit). Classes group MuJoCo bodies:

    0 background / table   geoms of the world body, of the named background bodies (the table,
                            walls) and pixels where nothing is hit
    1 robot                 bodies in the subtree of the robot's base body
    2 manipulated object    other bodies with a degree of freedom (free, slide, hinge joints)
    3 other objects         the remaining bodies (fixed fixtures: boxes, walls, goals)
"""

from __future__ import annotations

import colorsys
import contextlib
from dataclasses import dataclass, field, replace
from typing import Iterator, Sequence

import mujoco
import numpy as np

SEGMENT_CLASSES = ("background", "robot", "object", "other")
FAR_DEPTH = 3.0  # metres: depth where nothing is hit (MuJoCo reports the far plane, ~100 m) is clipped here


@dataclass(frozen=True)
class VisualCondition:
    """One visual setting of a scene. The default is the unedited scene."""

    name: str = "clean"
    light_scale: float = 1.0  # multiplies every light's (and the headlight's) diffuse and ambient colour
    light_tint: tuple[float, float, float] = (1.0, 1.0, 1.0)  # RGB gains on the lights
    hue_shift: float = 0.0  # rotation of every material/geom colour's hue, in turns (0.5 = opposite hue)
    saturation: float = 1.0  # multiplies every colour's saturation
    camera_shift: tuple[float, float, float] = (0.0, 0.0, 0.0)  # metres added to every fixed camera's position

    @property
    def is_clean(self) -> bool:
        return self == replace(VisualCondition(), name=self.name)


# Held-out conditions of the benchmark: each changes one factor a real robot's logs vary in.
BENCHMARK_CONDITIONS: dict[str, VisualCondition] = {
    c.name: c
    for c in (
        VisualCondition("clean"),
        VisualCondition("dim_warm_light", light_scale=0.55, light_tint=(1.0, 0.8, 0.55)),
        VisualCondition("bright_cool_light", light_scale=1.4, light_tint=(0.7, 0.85, 1.0)),
        VisualCondition("hue_shift_third", hue_shift=1 / 3),
        VisualCondition("hue_shift_half_desaturated", hue_shift=0.5, saturation=0.5),
        VisualCondition("camera_jitter", camera_shift=(0.02, -0.02, 0.015)),
    )
}


def random_condition(rng: np.random.Generator, name: str = "random", camera_jitter: float = 0.0) -> VisualCondition:
    """A random lighting and colour change (and, with `camera_jitter` > 0 m, camera shift), for
    pretraining or training data with varied conditions. Ranges cover the benchmark's held-out
    conditions' factors without copying them."""
    return VisualCondition(
        name=name,
        light_scale=float(rng.uniform(0.5, 1.5)),
        light_tint=tuple(float(x) for x in rng.uniform(0.6, 1.0, 3)),
        hue_shift=float(rng.uniform(0.0, 1.0)),
        saturation=float(rng.uniform(0.4, 1.2)),
        camera_shift=tuple(float(x) for x in rng.uniform(-camera_jitter, camera_jitter, 3)),
    )


def _edit_colours(rgba: np.ndarray, hue_shift: float, saturation: float) -> np.ndarray:
    """Hue rotation and saturation scaling of (N, 4) RGBA rows (alpha kept)."""
    out = rgba.copy()
    for row in out:
        h, s, v = colorsys.rgb_to_hsv(*np.clip(row[:3], 0.0, 1.0))
        row[:3] = colorsys.hsv_to_rgb((h + hue_shift) % 1.0, min(1.0, s * saturation), v)
    return out


@dataclass
class SceneEditor:
    """Applies `VisualCondition`s to `model` and restores its original colours, lights and cameras.

    With `data`, camera poses (`data.cam_xpos`) are recomputed at once (`mj_camlight`); without it a
    camera shift shows from the next `mj_forward` / `mj_step` (an env's reset or step) on.
    """

    model: mujoco.MjModel
    data: mujoco.MjData | None = None
    _original: dict[str, np.ndarray] = field(init=False, default_factory=dict)
    current: VisualCondition = field(init=False, default_factory=VisualCondition)

    FIELDS = ("mat_rgba", "geom_rgba", "light_diffuse", "light_ambient", "cam_pos")

    def __post_init__(self) -> None:
        self._original = {name: getattr(self.model, name).copy() for name in self.FIELDS}
        headlight = self.model.vis.headlight
        self._original_headlight = (np.array(headlight.diffuse), np.array(headlight.ambient))

    def apply(self, condition: VisualCondition) -> None:
        """Sets the model to `condition` (from the original scene, not on top of the last one)."""
        self.restore()
        m, o = self.model, self._original
        if condition.hue_shift or condition.saturation != 1.0:
            m.mat_rgba[:] = _edit_colours(o["mat_rgba"], condition.hue_shift, condition.saturation)
            m.geom_rgba[:] = _edit_colours(o["geom_rgba"], condition.hue_shift, condition.saturation)
        gain = condition.light_scale * np.asarray(condition.light_tint, dtype=np.float32)
        m.light_diffuse[:] = np.clip(o["light_diffuse"] * gain, 0.0, 1.0)
        m.light_ambient[:] = np.clip(o["light_ambient"] * gain, 0.0, 1.0)
        diffuse, ambient = self._original_headlight
        m.vis.headlight.diffuse[:] = np.clip(diffuse * gain, 0.0, 1.0)
        m.vis.headlight.ambient[:] = np.clip(ambient * gain, 0.0, 1.0)
        m.cam_pos[:] = o["cam_pos"] + np.asarray(condition.camera_shift)
        self._update_cameras()
        self.current = condition

    def restore(self) -> None:
        for name, value in self._original.items():
            getattr(self.model, name)[:] = value
        self.model.vis.headlight.diffuse[:], self.model.vis.headlight.ambient[:] = self._original_headlight
        self._update_cameras()
        self.current = VisualCondition()

    def _update_cameras(self) -> None:
        if self.data is not None:
            mujoco.mj_camlight(self.model, self.data)  # cam_xpos from the (edited) cam_pos and the body poses

    @contextlib.contextmanager
    def applied(self, condition: VisualCondition) -> Iterator["SceneEditor"]:
        self.apply(condition)
        try:
            yield self
        finally:
            self.restore()


# ---------------------------------------------------------------- dense ground truth
def body_classes(model: mujoco.MjModel, robot_root: str, background_bodies: Sequence[str] = ()) -> np.ndarray:
    """Class (index into `SEGMENT_CLASSES`) of every body of `model`; `robot_root` names the robot's
    base body, `background_bodies` the bodies that count as table / background."""
    root = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, robot_root)
    if root < 0:
        names = [model.body(i).name for i in range(model.nbody)]
        raise ValueError(f"robot base body {robot_root!r} is not in the model; bodies: {names}")
    classes = np.full(model.nbody, SEGMENT_CLASSES.index("other"), dtype=np.int64)
    classes[0] = SEGMENT_CLASSES.index("background")
    for body in range(1, model.nbody):
        ancestor = body
        while ancestor not in (0, root):
            ancestor = int(model.body_parentid[ancestor])
        if ancestor == root:
            classes[body] = SEGMENT_CLASSES.index("robot")
        elif model.body(body).name in background_bodies:
            classes[body] = SEGMENT_CLASSES.index("background")
        elif model.body_jntnum[body] > 0:
            classes[body] = SEGMENT_CLASSES.index("object")
    return classes


class DenseLabels:
    """Depth and semantic segmentation of the frames `cameras.render` returns (same size, same flips)."""

    def __init__(self, cameras, robot_root: str, background_bodies: Sequence[str] = ()) -> None:
        self.cameras = cameras  # a common.MujocoCameras
        self.geom_classes = body_classes(cameras.model, robot_root, background_bodies)[cameras.model.geom_bodyid]

    def _render(self, data: mujoco.MjData, camera: str, mode: str) -> np.ndarray:
        """`camera`'s frame with the renderer switched to `mode` ("depth" | "segmentation") and back to RGB."""
        renderer = self.cameras.renderer
        getattr(renderer, f"enable_{mode}_rendering")()
        try:
            return self.cameras.render_camera(data, camera)
        finally:
            getattr(renderer, f"disable_{mode}_rendering")()

    def depth(self, data: mujoco.MjData, camera: str) -> np.ndarray:
        """float32 (H, W) distance along the camera axis in metres, clipped at `FAR_DEPTH`."""
        return np.minimum(self._render(data, camera, "depth"), FAR_DEPTH).astype(np.float32)

    def segmentation(self, data: mujoco.MjData, camera: str) -> np.ndarray:
        """int64 (H, W) class map (indices into `SEGMENT_CLASSES`)."""
        ids = self._render(data, camera, "segmentation")
        object_id, object_type = ids[..., 0], ids[..., 1]
        classes = np.zeros(object_id.shape, dtype=np.int64)  # background where nothing is hit
        is_geom = (object_type == int(mujoco.mjtObj.mjOBJ_GEOM)) & (object_id >= 0)
        classes[is_geom] = self.geom_classes[object_id[is_geom]]
        return classes


def patch_targets(depth: np.ndarray, segmentation: np.ndarray, patch: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-patch targets on a `patch`-pixel grid: mean depth (N, gh, gw) and majority class (N, gh, gw).

    `depth` (N, H, W) and `segmentation` (N, H, W) must have sides divisible by `patch`.
    """
    count, height, width = depth.shape
    if height % patch or width % patch:
        raise ValueError(f"frames {height}×{width} px do not tile into {patch}-px patches")
    gh, gw = height // patch, width // patch
    blocks = depth.reshape(count, gh, patch, gw, patch)
    mean_depth = blocks.mean(axis=(2, 4))
    seg = segmentation.reshape(count, gh, patch, gw, patch).transpose(0, 1, 3, 2, 4).reshape(count, gh, gw, -1)
    votes = np.stack([(seg == k).sum(-1) for k in range(len(SEGMENT_CLASSES))], axis=-1)
    return mean_depth.astype(np.float32), votes.argmax(-1)


def condition_table(conditions: Sequence[VisualCondition]) -> str:
    """Markdown table of conditions (for reports)."""
    lines = ["| condition | light × | tint | hue shift | saturation × | camera shift (m) |", "|---|---|---|---|---|---|"]
    for c in conditions:
        tint = ", ".join(f"{x:.2f}" for x in c.light_tint)
        shift = ", ".join(f"{x:+.3f}" for x in c.camera_shift)
        lines.append(f"| {c.name} | {c.light_scale:.2f} | {tint} | {c.hue_shift:.2f} | {c.saturation:.2f} | {shift} |")
    return "\n".join(lines)
