"""The encoder benchmark end to end at tiny size: scenes under every condition, splits, baselines in
the table, the report files, and clear errors for bad arguments."""

import json

import numpy as np
import pytest
import torch

from lerobot_env_vla_dino.encoder_benchmark import (
    EncoderBenchmarkConfig,
    baseline_specs,
    build_encoder,
    run_encoder_benchmark,
    split_rows,
)
from lerobot_env_vla_dino.scene_data import SceneData, collect_scenes
from lerobot_env_vla_dino.visual import BENCHMARK_CONDITIONS
from vla_dino.encoder import DinoEncoder


@pytest.fixture(scope="module")
def scenes_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scenes")
    # 12 episodes: two per condition, one of them held out
    collect_scenes("reach-v3", 12, list(BENCHMARK_CONDITIONS.values()), image_size=28, seed=1000, max_steps=12, frame_stride=2).save(folder)
    return folder


def test_splits_hold_out_whole_episodes_per_condition(scenes_dir):
    scenes = SceneData.load(scenes_dir)
    splits = split_rows(scenes)
    assert set(splits) == {"clean", "across", "heldout"}
    clean = [i for i, c in enumerate(scenes.conditions) if c.is_clean][0]
    for name, (train, test) in splits.items():
        assert not set(scenes.episode[train]) & set(scenes.episode[test]), name
    train, test = splits["heldout"]
    assert (scenes.condition[train] == clean).all() and (scenes.condition[test] != clean).all()
    train, test = splits["across"]
    assert set(scenes.condition[train]) == set(scenes.condition[test]) == set(range(len(scenes.conditions)))


def test_benchmark_end_to_end_with_baselines(scenes_dir, tmp_path):
    torch.manual_seed(0)
    encoder = DinoEncoder.from_size("small-test", patch_size=7, image_size=28)
    encoder.save_pretrained(tmp_path / "enc_a")
    DinoEncoder.from_size("small-test", patch_size=7, image_size=28).save_pretrained(tmp_path / "enc_b")
    config = EncoderBenchmarkConfig(
        encoders=[f"mine=dino:{tmp_path / 'enc_a'}", f"mine=dino:{tmp_path / 'enc_b'}"], scenes=str(scenes_dir),
        image_size=28, budgets=[3, 5], dense_budgets=[2], draws=2, random_seeds=[0, 1], resnet_steps=2,
        resnet_budgets=[5], out_dir=str(tmp_path / "out"),
    )
    results = run_encoder_benchmark(config)
    groups = [r.group for r in results]
    assert groups == ["mine", "random init of mine", "random init of mine", "mine", "pixels", "ResNet-18 from scratch (end to end)"]
    for row in results[:-1]:
        assert set(row.state) == {"clean", "across", "heldout"}
        assert set(row.state["clean"]) == {3, 5} and len(row.state["clean"][5].values) == 2
        miou = row.dense["across"][2]["segmentation_miou"].mean
        assert 0.0 <= miou <= 1.0
    assert set(results[-1].state) == {"clean", "across"} and set(results[-1].state["clean"]) == {5}
    out = tmp_path / "out"
    report = (out / "report.md").read_text()
    assert "| mine |" in report and "| random init of mine |" in report and "| pixels |" in report
    assert "| ResNet-18 from scratch (end to end) |" in report and "–" in report  # no dense row / heldout for ResNet
    assert (out / "probes.png").stat().st_size > 1000
    saved = json.loads((out / "results.json").read_text())
    assert len(saved) == len(results)
    # the same seed gives the same random init whatever the checkpoint's weights
    a = build_encoder(f"dino:{tmp_path / 'enc_a'}@seed1")
    b = build_encoder(f"dino:{tmp_path / 'enc_b'}@seed1")
    images = np.zeros((1, 28, 28, 3), np.uint8)
    assert np.array_equal(a(images).pooled, b(images).pooled)


def test_bad_arguments_name_themselves(scenes_dir, tmp_path):
    with pytest.raises(ValueError, match="encoder spec 'resnet50'"):
        build_encoder("resnet50")
    with pytest.raises(ValueError, match="@seed"):
        build_encoder("vit:small-test@seedx")
    too_many = EncoderBenchmarkConfig(encoders=["vit:small-test"], scenes=str(scenes_dir), image_size=28, budgets=[500], dense_budgets=[2],
                                      random_seeds=[], resnet_splits=[], out_dir=str(tmp_path / "a"))
    with pytest.raises(ValueError, match=r"--budgets/--dense_budgets \[500\] exceed"):
        run_encoder_benchmark(too_many)
    bad_split = EncoderBenchmarkConfig(encoders=["pixels"], scenes=str(scenes_dir), resnet_splits=["sideways"], out_dir=str(tmp_path / "b"))
    with pytest.raises(ValueError, match="--resnet_splits"):
        run_encoder_benchmark(bad_split)
    with pytest.raises(ValueError, match="multiple of its patch size 14"):  # a 14-px patch model fed 30 px frames
        build_encoder("vit:small-test")(np.zeros((1, 30, 30, 3), np.uint8))


def test_baseline_specs_add_pixels_once():
    rows = baseline_specs(["pixels", "dino:/x@seed3"], [0], include_pixels=True)
    assert rows == [("pixels", "pixels"), ("dino:/x@seed3", "dino:/x@seed3")]
