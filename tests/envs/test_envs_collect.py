"""Demo collection writes a LeRobotDataset that LeRobot reads back."""

import numpy as np
import pytest
from lerobot.datasets.lerobot_dataset import LeRobotDataset

from lerobot_env_vla_dino.collect import collect_demos


@pytest.mark.parametrize("use_videos", [True, False])
def test_collect_reads_back(tmp_path, use_videos):
    root = collect_demos(
        "vla_dino/FetchPush-v0", num_episodes=2, root=tmp_path / "ds", repo_id="test/fetch_push", seed=0,
        image_size=32, use_videos=use_videos,
    )
    dataset = LeRobotDataset("test/fetch_push", root=root)
    assert dataset.num_episodes == 2
    features = dataset.features
    assert features["observation.images.front"]["dtype"] == ("video" if use_videos else "image")
    assert tuple(features["observation.state"]["shape"]) == (5,)
    assert tuple(features["action"]["shape"]) == (4,)
    assert {"sim_state.obj_pos", "sim_state.gripper_pos", "sim_state.goal_pos"} <= set(features)
    for episode in range(2):
        start = dataset.meta.episodes["dataset_from_index"][episode]
        stop = dataset.meta.episodes["dataset_to_index"][episode]
        last = dataset[stop - 1]
        assert bool(last["next.success"]) and bool(last["next.done"])  # kept episodes end in success
        assert not any(bool(dataset[i]["next.done"]) for i in range(start, stop - 1))
        assert int(dataset[start]["episode_seed"]) == int(last["episode_seed"])
    item = dataset[0]
    assert item["observation.images.front"].shape == (3, 32, 32)
    assert item["task"] == "push the block to the red target"
    # The stored state is the first observation of the seeded episode.
    np.testing.assert_allclose(item["sim_state.gripper_pos"].numpy(), item["observation.state"].numpy()[:3], atol=1e-6)


def test_failed_episodes_are_dropped_or_kept(tmp_path):
    # Two steps are too few to push the block: every episode fails.
    with pytest.raises(RuntimeError, match="succeeded in only 0 of 2"):
        collect_demos("vla_dino/FetchPush-v0", 1, tmp_path / "a", seed=1, image_size=16, max_steps=2, max_attempts=2)
    root = collect_demos(
        "vla_dino/FetchPush-v0", 2, tmp_path / "b", seed=1, image_size=16, max_steps=2, drop_failures=False,
        use_videos=False,
    )
    dataset = LeRobotDataset("vla_dino/demos", root=root)
    assert dataset.num_episodes == 2 and dataset.num_frames == 4
    assert not any(bool(dataset[i]["next.success"]) for i in range(4))
    with pytest.raises(FileExistsError, match="already exists"):
        collect_demos("vla_dino/FetchPush-v0", 1, root)
