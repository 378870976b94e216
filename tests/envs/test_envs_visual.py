"""Visual conditions (MuJoCo model edits, undone exactly), the depth and segmentation renders
against MuJoCo's own geometry (camera pose, `project`, `mj_ray`), and the scene data round trip."""

import mujoco
import numpy as np
import pytest

from lerobot_env_vla_dino.collect import make_env
from lerobot_env_vla_dino.scene_data import (
    METAWORLD_BACKGROUND,
    METAWORLD_ROBOT_ROOT,
    SceneData,
    collect_scenes,
    episode_conditions,
)
from lerobot_env_vla_dino.visual import (
    BENCHMARK_CONDITIONS,
    FAR_DEPTH,
    SEGMENT_CLASSES,
    DenseLabels,
    SceneEditor,
    VisualCondition,
    body_classes,
    condition_table,
    patch_targets,
    random_condition,
)

ROBOT, OBJECT, BACKGROUND = (SEGMENT_CLASSES.index(n) for n in ("robot", "object", "background"))


def _push_scene(camera: str, size: int):
    env = make_env("vla_dino/MetaWorld-push-v3", image_size=size, cameras=(camera,))
    sim = env.unwrapped
    env.reset(seed=0)
    model, data = sim.sim.model, sim.sim.data
    mujoco.mj_forward(model, data)  # Meta-World's reset_model can move bodies without recomputing the state
    return env, sim, model, data


def _camera_pose(model, data, camera: str) -> tuple[np.ndarray, np.ndarray]:
    """Position and the three axes (columns: right, up, backward) of a fixed camera, from MuJoCo's data."""
    cam = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
    return data.cam_xpos[cam].copy(), data.cam_xmat[cam].reshape(3, 3).copy()


def _body_pos(model, data, body: str) -> np.ndarray:
    """Centre of the body's first visible geom (the hand body's own origin sits between the claws)."""
    body_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, body)
    geoms = np.flatnonzero((model.geom_bodyid == body_id) & (model.geom_group < 3))
    return (data.geom_xpos[geoms[0]] if len(geoms) else data.xpos[body_id]).copy()


# ---------------------------------------------------------------- dense labels vs MuJoCo's geometry
@pytest.mark.parametrize("camera", ["corner", "topview"])
def test_depth_and_classes_match_ray_casts_through_every_pixel(camera):
    """Each pixel of the depth / class renders agrees with `mj_ray` from the camera (pose from
    `data.cam_xpos`/`cam_xmat`, field of view from `cam_fovy`) through that pixel's centre; the
    corner camera is flipped in both axes, as its RGB frames are."""
    size = 56
    env, sim, model, data = _push_scene(camera, size)
    labels = DenseLabels(sim.cameras, METAWORLD_ROBOT_ROOT, METAWORLD_BACKGROUND)
    depth, classes = labels.depth(data, camera), labels.segmentation(data, camera)
    assert depth.shape == classes.shape == (size, size) and depth.dtype == np.float32
    position, axes = _camera_pose(model, data, camera)
    tan = np.tan(np.deg2rad(model.cam_fovy[mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)]) / 2)
    flipped = camera in sim.cameras.flipped
    assert flipped == (camera == "corner")
    visible = np.array([1, 1, 1, 0, 0, 0], np.uint8)  # the renderer's default geom groups
    geom = np.zeros(1, np.int32)
    ray_depth, ray_class = np.full((size, size), FAR_DEPTH), np.zeros((size, size), int)
    for row in range(size):
        for col in range(size):
            raw_row, raw_col = (size - 1 - row, size - 1 - col) if flipped else (row, col)
            x = (2 * (raw_col + 0.5) / size - 1) * tan
            y = (1 - 2 * (raw_row + 0.5) / size) * tan
            direction = axes @ np.array([x, y, -1.0])
            distance = mujoco.mj_ray(model, data, position, direction / np.linalg.norm(direction), visible, 1, -1, geom)
            if distance >= 0:
                ray_depth[row, col] = min(distance / np.linalg.norm(direction), FAR_DEPTH)  # along the camera axis
                ray_class[row, col] = labels.geom_classes[geom[0]]
    env.close()
    agree = (classes == ray_class).mean()
    assert agree > 0.97, agree  # only silhouette edges may differ
    close = np.abs(depth - ray_depth) < 0.01
    assert close.mean() > 0.95, close.mean()
    for k in (BACKGROUND, ROBOT):
        assert (classes == k).sum() > 50


def test_projected_bodies_have_their_class_and_depth_on_the_flipped_corner_camera():
    """Hand, puck (their geoms' centres) and a table point projected with `MujocoCameras.project` land on robot / object /
    background pixels, whose depth is the point's distance along the camera's forward axis
    (`-cam_xmat[:, 2]`) within the body's size; the mirrored pixels do not."""
    size = 112
    env, sim, model, data = _push_scene("corner", size)
    labels = DenseLabels(sim.cameras, METAWORLD_ROBOT_ROOT, METAWORLD_BACKGROUND)
    depth, classes = labels.depth(data, "corner"), labels.segmentation(data, "corner")
    position, axes = _camera_pose(model, data, "corner")
    forward = -axes[:, 2]
    gl = sim.cameras.renderer.scene.camera
    np.testing.assert_allclose(mujoco.mjv_averageCamera(gl[0], gl[1]).pos, position, atol=1e-6)
    checks = [
        ("hand", _body_pos(model, data, "hand"), ROBOT, 0.06),
        ("obj", _body_pos(model, data, "obj"), OBJECT, 0.04),
        ("table", np.array([0.15, 0.55, 0.0]), BACKGROUND, 0.02),  # a bare spot of the table top (z = 0)
    ]
    for body, point, expected_class, tolerance in checks:
        row, col = sim.project("corner", point)
        r, c = int(row), int(col)
        assert classes[r, c] == expected_class, (body, classes[r - 1 : r + 2, c - 1 : c + 2])
        assert abs(depth[r, c] - (point - position) @ forward) < tolerance, (body, depth[r, c], (point - position) @ forward)
    row, col = sim.project("corner", _body_pos(model, data, "obj"))
    assert classes[size - 1 - int(row), size - 1 - int(col)] != OBJECT  # an unflipped lookup would miss the puck
    assert classes[(classes == OBJECT)].size >= 5
    env.close()


def test_body_classes_group_the_sawyer_scene():
    env = make_env("vla_dino/MetaWorld-push-v3", image_size=56)
    model = env.unwrapped.sim.model
    classes = body_classes(model, METAWORLD_ROBOT_ROOT, METAWORLD_BACKGROUND)
    by_name = {model.body(i).name: SEGMENT_CLASSES[k] for i, k in enumerate(classes)}
    assert by_name["world"] == by_name["tablelink"] == by_name["RetainingWall"] == "background"
    assert by_name["hand"] == by_name["rightpad"] == by_name["base"] == "robot"
    assert by_name["obj"] == "object"
    with pytest.raises(ValueError, match="robot base body 'no_such_body'"):
        body_classes(model, "no_such_body")
    env.close()


def test_patch_targets_by_hand():
    depth = np.array([[[1, 1, 2, 2], [1, 1, 2, 4], [0, 0, 0, 0], [0, 0, 0, 4]]], dtype=np.float32)
    seg = np.array([[[1, 1, 0, 0], [1, 0, 0, 2], [3, 3, 3, 3], [3, 0, 0, 0]]])
    mean_depth, majority = patch_targets(depth, seg, 2)
    np.testing.assert_allclose(mean_depth, [[[1.0, 2.5], [0.0, 1.0]]])
    np.testing.assert_array_equal(majority, [[[1, 0], [3, 0]]])  # 3 vs 1, 3 vs 1, 3 vs 1, 3 vs 1
    with pytest.raises(ValueError, match="patch"):
        patch_targets(np.zeros((1, 5, 4)), np.zeros((1, 5, 4), int), 2)


# ---------------------------------------------------------------- visual conditions
def test_conditions_change_the_frame_and_restore_brings_it_back_bit_identical():
    env = make_env("vla_dino/MetaWorld-push-v3", image_size=56, cameras=("corner",))
    sim = env.unwrapped
    env.reset(seed=3)
    model, data = sim.sim.model, sim.sim.data
    mujoco.mj_forward(model, data)
    render = lambda: sim.cameras.render(data)["corner"]  # noqa: E731
    labels = DenseLabels(sim.cameras, METAWORLD_ROBOT_ROOT, METAWORLD_BACKGROUND)
    clean, clean_seg = render(), labels.segmentation(data, "corner")
    fields = {name: getattr(model, name).copy() for name in SceneEditor.FIELDS}
    editor = SceneEditor(model, data)  # with data: a camera shift shows at once
    for name, condition in BENCHMARK_CONDITIONS.items():
        if condition.is_clean:
            with editor.applied(condition):
                np.testing.assert_array_equal(render(), clean)
            continue
        with editor.applied(condition):
            assert editor.current == condition
            edited = render()
            assert np.abs(edited.astype(int) - clean).mean() > 1.0, name
            seg = labels.segmentation(data, "corner")
            if any(condition.camera_shift):
                assert not np.array_equal(seg, clean_seg), name  # the camera moved
            else:
                np.testing.assert_array_equal(seg, clean_seg)  # light and colour leave the geometry alone
        np.testing.assert_array_equal(render(), clean, err_msg=name)
        for field_name, value in fields.items():
            np.testing.assert_array_equal(getattr(model, field_name), value, err_msg=field_name)
        assert editor.current.is_clean
    # apply() starts from the original scene each time (edits do not stack), restore() undoes it
    dim = BENCHMARK_CONDITIONS["dim_warm_light"]
    editor.apply(dim)
    once = render()
    editor.apply(BENCHMARK_CONDITIONS["hue_shift_third"])
    editor.apply(dim)
    np.testing.assert_array_equal(render(), once)
    assert once.mean() < clean.mean()  # dimmer light, darker frame
    editor.restore()
    np.testing.assert_array_equal(render(), clean)
    with pytest.raises(RuntimeError):  # restored even when the body raises
        with editor.applied(BENCHMARK_CONDITIONS["hue_shift_half_desaturated"]):
            raise RuntimeError("boom")
    np.testing.assert_array_equal(render(), clean)
    # without data, a camera shift shows from the next mj_forward / step (as in an env's reset)
    plain = SceneEditor(model)
    with plain.applied(BENCHMARK_CONDITIONS["camera_jitter"]):
        mujoco.mj_forward(model, data)
        assert not np.array_equal(render(), clean)
    mujoco.mj_forward(model, data)
    np.testing.assert_array_equal(render(), clean)
    env.close()


def test_random_conditions_are_reproducible_and_in_range():
    a = [random_condition(np.random.default_rng(7)) for _ in range(2)]
    assert a[0] == a[1]
    conditions = [random_condition(np.random.default_rng(s), camera_jitter=0.01) for s in range(20)]
    for c in conditions:
        assert 0.5 <= c.light_scale <= 1.5 and 0.4 <= c.saturation <= 1.2 and 0.0 <= c.hue_shift <= 1.0
        assert all(abs(x) <= 0.01 for x in c.camera_shift) and not c.is_clean
    assert random_condition(np.random.default_rng(0)).camera_shift == (0.0, 0.0, 0.0)
    assert VisualCondition().is_clean and VisualCondition(name="other").is_clean
    assert not BENCHMARK_CONDITIONS["camera_jitter"].is_clean
    table = condition_table(list(BENCHMARK_CONDITIONS.values())).splitlines()
    assert len(table) == 2 + len(BENCHMARK_CONDITIONS) and "dim_warm_light" in table[3]


def test_episode_conditions():
    named = [BENCHMARK_CONDITIONS["clean"], BENCHMARK_CONDITIONS["camera_jitter"]]
    assert episode_conditions(5, named, 0.0, 0) == [named[k % 2] for k in range(5)]
    mixed = episode_conditions(10, None, 0.3, seed=1)
    assert sum(not c.is_clean for c in mixed) == 3
    assert mixed == episode_conditions(10, None, 0.3, seed=1)
    assert all(c.is_clean for c in episode_conditions(4, None, 0.0, 0))
    with pytest.raises(ValueError, match="varied_fraction"):
        episode_conditions(4, None, 1.5, 0)


# ---------------------------------------------------------------- scene data
def test_collect_scenes_save_load_round_trip(tmp_path):
    conditions = [BENCHMARK_CONDITIONS["clean"], BENCHMARK_CONDITIONS["dim_warm_light"], BENCHMARK_CONDITIONS["clean"]]
    scenes = collect_scenes(
        "push-v3", 3, conditions, image_size=56, max_steps=6, frame_stride=2, frames_dir=tmp_path / "frames"
    )
    n = len(scenes)
    assert n == 9  # 3 episodes × frames 0, 2, 4
    assert scenes.images.shape == (n, 56, 56, 3) and scenes.images.dtype == np.uint8
    assert scenes.depth.shape == scenes.segmentation.shape == (n, 56, 56)
    assert scenes.depth.max() <= FAR_DEPTH and scenes.depth.min() > 0.1
    assert set(np.unique(scenes.segmentation)) <= set(range(len(SEGMENT_CLASSES)))
    np.testing.assert_array_equal(scenes.episode, np.repeat([0, 1, 2], 3))
    assert [c.name for c in scenes.conditions] == ["clean", "dim_warm_light"]
    np.testing.assert_array_equal(scenes.condition, np.repeat([0, 1, 0], 3))
    assert scenes.images[scenes.condition == 1].mean() < scenes.images[scenes.condition == 0].mean()
    assert {"hand_pos", "obj_pos", "goal_pos"} <= set(scenes.states) and scenes.states["hand_pos"].shape == (n, 3)
    assert scenes.actions.shape == (n, 4) and scenes.agent_pos.shape == (n, 4)
    pngs = sorted((tmp_path / "frames").glob("episode_*/*.png"))
    assert len(pngs) == n and pngs[0].parent.name == "episode_0000" and pngs[1].name == "0002.png"

    loaded = SceneData.load(scenes.save(tmp_path / "scene"))
    for name in ("images", "segmentation", "agent_pos", "actions", "episode", "condition"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(scenes, name), err_msg=name)
    np.testing.assert_allclose(loaded.depth, scenes.depth, rtol=1e-3)  # stored as float16
    assert loaded.depth.dtype == np.float32 and loaded.segmentation.dtype == np.int64
    assert loaded.conditions == scenes.conditions and (loaded.task, loaded.camera) == ("push-v3", "corner")
    for key, value in scenes.states.items():
        np.testing.assert_array_equal(loaded.states[key], value)
    part = loaded.subset(np.flatnonzero(loaded.episode == 1))
    assert len(part) == 3 and (part.condition == 1).all() and part.conditions == loaded.conditions


def test_scene_data_bad_input(tmp_path):
    with pytest.raises(ValueError, match="'vla_dino/PushT-v0'.*Meta-World"):
        collect_scenes("vla_dino/PushT-v0", 1)
    with pytest.raises(ValueError, match="num_episodes=0"):
        collect_scenes("push-v3", 0)
    with pytest.raises(FileNotFoundError, match="no scene.npz"):
        SceneData.load(tmp_path)
