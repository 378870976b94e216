"""Pieces of the frozen-encoder benchmark: history indexing, BC training, the results table."""

import numpy as np
import torch

from lerobot_env_vla_dino.frozen_benchmark import BCPolicy, BenchmarkRow, history_indices, markdown_table, train_bc


def test_history_indices_repeat_episode_start():
    episodes = np.array([0, 0, 0, 1, 1])
    np.testing.assert_array_equal(history_indices(episodes, 3), [[0, 0, 0], [0, 0, 1], [0, 1, 2], [3, 3, 3], [3, 3, 4]])


def test_bc_head_fits_a_linear_policy():
    torch.manual_seed(0)
    features, states = torch.randn(256, 8), torch.randn(256, 3)
    actions = features[:, :2] * 2.0 - states[:, :2]
    policy = BCPolicy(8, 3, 2, history=1)
    losses = train_bc(policy, features, states, actions, history_indices(np.zeros(256, int), 1), epochs=60,
                      batch_size=64, lr=1e-3, seed=0, device="cpu")
    assert losses[-1] < 0.05 * losses[0]  # normalised-action MSE


def test_markdown_table_lists_every_encoder_and_task():
    rows = [
        BenchmarkRow("reach-v3", "vit:tiny", 0.5, (0.2, 0.8), 5, 10, 0.1, 64, 1.0, 2.0),
        BenchmarkRow("push-v3", "vit:tiny", 0.0, (0.0, 0.3), 0, 10, 0.1, 64, 1.0, 2.0),
        BenchmarkRow("reach-v3", "resnet18_scratch", 1.0, (0.7, 1.0), 10, 10, 0.1, 512, 1.0, 2.0),
    ]
    table = markdown_table(rows).splitlines()
    assert table[0] == "| encoder | reach-v3 | push-v3 | mean |"
    assert table[2].startswith("| `vit:tiny` | 5/10 (0.20–0.80) | 0/10 (0.00–0.30) | 0.25 |")
    assert table[3] == "| `resnet18_scratch` | 10/10 (0.70–1.00) | – | 1.00 |"


# ---------------------------------------------------------------- visual conditions, baselines, the run
import json  # noqa: E402

import pytest  # noqa: E402

from lerobot_env_vla_dino.collect import collect_demos  # noqa: E402
from lerobot_env_vla_dino.evaluate import evaluate  # noqa: E402
from lerobot_env_vla_dino.frozen_benchmark import (  # noqa: E402
    ApplyCondition,
    EncoderSpec,
    FrozenBenchmarkConfig,
    FrozenEncoder,
    run_benchmark,
    validate,
    write_report,
)
from lerobot_env_vla_dino.probes import load_demo_arrays  # noqa: E402
from lerobot_env_vla_dino.visual import BENCHMARK_CONDITIONS  # noqa: E402


def test_encoder_specs_parse_and_bad_specs_name_the_argument():
    assert EncoderSpec.parse("vit:small-test@seed1") == EncoderSpec("vit", "small-test", 1)
    assert EncoderSpec.parse("vit:tiny") == EncoderSpec("vit", "tiny", None)
    assert EncoderSpec.parse("pixels") == EncoderSpec("pixels", "12") and EncoderSpec.parse("pixels:8").source == "8"
    assert EncoderSpec.parse("dino:outputs/export").source == "outputs/export"
    assert EncoderSpec.parse("resnet18_scratch").kind == "resnet18_scratch"
    assert EncoderSpec.parse("vit:tiny@seed3").base == "vit:tiny"
    for bad in ("resnet50", "vit:", "pixels:big", "dino:"):
        with pytest.raises(ValueError, match="--encoders"):
            EncoderSpec.parse(bad)
    with pytest.raises(ValueError, match="@seed<N>"):
        EncoderSpec.parse("vit:tiny@3")
    assert EncoderSpec.parse("dino:runs/a/export/hf@seed2") == EncoderSpec("dino", "runs/a/export/hf", 2)
    labelled = EncoderSpec.parse("recipe=dino:runs/a/export/hf")
    assert labelled == EncoderSpec("dino", "runs/a/export/hf", None, "recipe") and labelled.group == "`recipe`"
    assert EncoderSpec.parse("dino:x@seed0").group == "`dino:x` random init" and EncoderSpec.parse("pixels").group is None


def test_dino_seed_is_random_init_of_the_checkpoints_architecture(tmp_path):
    from vla_dino.encoder import DinoEncoder

    torch.manual_seed(7)
    trained = DinoEncoder.from_size("tiny", image_size=56)
    with torch.no_grad():
        for parameter in trained.parameters():
            parameter.add_(0.5)  # not what any init gives
    trained.save_pretrained(tmp_path / "export")
    images = np.random.default_rng(0).integers(0, 256, size=(2, 56, 56, 3), dtype=np.uint8)
    source = f"dino:{tmp_path / 'export'}"
    loaded = FrozenEncoder(source, 56, "cpu")
    randomised = FrozenEncoder(f"{source}@seed1", 56, "cpu")
    assert randomised.model.config.to_dict() == loaded.model.config.to_dict()  # the same architecture
    assert not np.allclose(randomised(images), loaded(images))
    np.testing.assert_array_equal(FrozenEncoder(f"{source}@seed1", 56, "cpu")(images), randomised(images))
    torch.manual_seed(1)
    fresh = DinoEncoder(loaded.model.config)
    for (name, a), (_, b) in zip(fresh.state_dict().items(), randomised.model.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)  # exactly the seed's init


def test_random_init_is_seeded_and_pixels_are_area_means():
    images = np.random.default_rng(0).integers(0, 256, size=(3, 56, 56, 3), dtype=np.uint8)
    torch.manual_seed(123)  # the global RNG does not decide the init
    a = FrozenEncoder("vit:tiny@seed1", 56, "cpu")(images)
    torch.manual_seed(456)
    np.testing.assert_array_equal(FrozenEncoder("vit:tiny@seed1", 56, "cpu")(images), a)
    assert not np.allclose(FrozenEncoder("vit:tiny@seed2", 56, "cpu")(images), a)
    np.testing.assert_array_equal(FrozenEncoder("vit:tiny", 56, "cpu", default_seed=1)(images), a)
    pixels = FrozenEncoder("pixels", 56, "cpu")(images[:, :24, :24])  # 24 px → 12 × 12: 2 × 2 means
    assert pixels.shape == (3, 3 * 12 * 12)
    np.testing.assert_allclose(pixels[1, 12 * 12 + 1], images[1, 0:2, 2:4, 1].mean() / 255.0, atol=1e-6)  # green, row 0, col 1


class _Recorder:
    """A policy that records the mean brightness of every frame it sees and does nothing."""

    def __init__(self):
        self.brightness = []

    def __call__(self, obs):
        self.brightness.append(obs["pixels"]["corner"].mean())
        return np.zeros(4, np.float32)


def test_evaluation_conditions_reach_every_evaluation_episode():
    env_id, kwargs = "vla_dino/MetaWorld-reach-v3", dict(image_size=32, cameras=("corner",))
    runs = {}
    for name in ("clean", "dim_warm_light"):
        recorder = _Recorder()
        setup = None if name == "clean" else ApplyCondition(BENCHMARK_CONDITIONS[name])
        evaluate(recorder, env_id, 2, seed=5, max_steps=2, num_videos=0, env_kwargs=kwargs, env_setup=setup)
        runs[name] = np.array(recorder.brightness)
    assert len(runs["clean"]) == len(runs["dim_warm_light"]) == 4  # 2 episodes × 2 steps
    assert (runs["dim_warm_light"] < 0.9 * runs["clean"]).all()  # both episodes, every step


def test_demos_under_varied_conditions(tmp_path):
    conditions = [BENCHMARK_CONDITIONS["clean"], BENCHMARK_CONDITIONS["dim_warm_light"]]
    root = collect_demos(
        "vla_dino/MetaWorld-reach-v3", 2, tmp_path / "demos", seed=0, drop_failures=False, image_size=32,
        use_videos=False, max_steps=3, conditions=conditions,
    )
    frames = load_demo_arrays(root)
    clean, dim = (frames["images"][frames["episodes"] == k].mean() for k in (0, 1))
    assert dim < 0.9 * clean
    with pytest.raises(ValueError, match="no MuJoCo model"):
        collect_demos("vla_dino/PushT-v0", 1, tmp_path / "pusht", conditions=conditions[1:], use_videos=False)


def test_bad_benchmark_arguments_name_the_argument():
    with pytest.raises(ValueError, match="task 'vla_dino/PushT-v0' has no MuJoCo scene.*--eval_conditions \\['dim_warm_light'\\]"):
        validate(FrozenBenchmarkConfig(tasks=["vla_dino/PushT-v0"], eval_conditions=["clean", "dim_warm_light"]))
    with pytest.raises(ValueError, match="--demo_varied_fraction"):
        validate(FrozenBenchmarkConfig(tasks=["vla_dino/PushT-v0"], demo_varied_fraction=0.5))
    validate(FrozenBenchmarkConfig(tasks=["vla_dino/PushT-v0"], eval_conditions=["clean"]))  # clean PushT is fine
    with pytest.raises(ValueError, match="--eval_conditions: \\['foggy'\\] unknown"):
        validate(FrozenBenchmarkConfig(eval_conditions=["foggy"]))
    with pytest.raises(ValueError, match="--encoders: 'clip'"):
        validate(FrozenBenchmarkConfig(encoders=["clip"]))
    with pytest.raises(ValueError, match="--num_demos=0"):
        validate(FrozenBenchmarkConfig(num_demos=0))
    defaults = FrozenBenchmarkConfig()
    assert (defaults.num_demos, defaults.num_eval, defaults.history) == (25, 25, 3)  # CortexBench


def test_markdown_table_with_conditions_and_seed_ranges():
    def row(encoder, condition, wins):
        return BenchmarkRow("reach-v3", encoder, wins / 4, (0.0, 1.0), wins, 4, 0.1, 64, 1.0, 2.0, condition)

    rows = [row("vit:tiny@seed0", "clean", 2), row("vit:tiny@seed0", "camera_jitter", 0),
            row("vit:tiny@seed1", "clean", 4), row("vit:tiny@seed1", "camera_jitter", 1), row("pixels", "clean", 3)]
    table = markdown_table(rows).splitlines()
    assert table[0] == "| encoder | reach-v3 · clean | reach-v3 · camera_jitter | mean | mean clean | mean changed |"
    assert table[2] == "| `vit:tiny@seed0` | 2/4 (0.00–1.00) | 0/4 (0.00–1.00) | 0.25 | 0.50 | 0.00 |"
    assert table[4].startswith("| `pixels` | 3/4 (0.00–1.00) | – | 0.75 | 0.75 |")
    assert table[5] == "| `vit:tiny` random init, 2 seeds (range) | 0.50–1.00 | 0.00–0.25 | 0.25–0.62 | 0.50–1.00 | 0.00–0.25 |"


def test_markdown_table_gives_labelled_pretraining_seeds_one_range_row():
    def row(encoder, wins):
        return BenchmarkRow("reach-v3", encoder, wins / 4, (0.0, 1.0), wins, 4, 0.1, 64, 1.0, 2.0)

    rows = [row("recipe=dino:a", 3), row("recipe=dino:b", 1), row("dino:a@seed0", 0), row("dino:a@seed1", 2)]
    table = markdown_table(rows).splitlines()
    assert table[-2:] == [
        "| `recipe`, 2 pretraining seeds (range) | 0.25–0.75 | 0.25–0.75 |",
        "| `dino:a` random init, 2 seeds (range) | 0.00–0.50 | 0.00–0.50 |",
    ]
    from lerobot_env_vla_dino.frozen_benchmark import seed_range_verdicts

    assert seed_range_verdicts(rows) == [
        "- `recipe` (2 seeds) vs `dino:a` random init (2 seeds), mean success: clean 0.25–0.75 vs 0.00–0.50 (overlapping)"
    ]
    def cell(encoder, condition, wins):
        return BenchmarkRow("push-v3", encoder, wins / 4, (0.0, 1.0), wins, 4, 0.1, 64, 1.0, 2.0, condition)

    wins = {"recipe=dino:a": (4, 0), "recipe=dino:b": (3, 1), "dino:a@seed0": (1, 2), "dino:a@seed1": (2, 3)}
    rows = [cell(e, c, w) for e, (clean, changed) in wins.items() for c, w in (("clean", clean), ("camera_jitter", changed))]
    assert seed_range_verdicts(rows) == [
        "- `recipe` (2 seeds) vs `dino:a` random init (2 seeds), mean success: clean 0.75–1.00 vs 0.25–0.50 (above); "
        "changed 0.00–0.25 vs 0.50–0.75 (below)"
    ]


def test_benchmark_end_to_end_tiny(tmp_path):
    config = FrozenBenchmarkConfig(
        tasks=["reach-v3"], encoders=["pixels", "resnet18_scratch"],
        eval_conditions=["clean", "hue_shift_third"], demo_varied_fraction=0.5, num_demos=2, num_eval=2,
        image_size=56, encoder_image_size=56, history=2, epochs=2, scratch_epochs=1, max_steps=5,
        demo_max_steps=5, keep_failed_demos=True, out_dir=str(tmp_path),
    )
    rows = run_benchmark(config)
    assert [(r.encoder, r.condition) for r in rows] == [
        (e, c) for e in config.encoders for c in config.eval_conditions
    ]
    assert all(r.episodes == 2 and 0.0 <= r.success_ci95[0] <= r.success_rate <= r.success_ci95[1] for r in rows)
    assert {r.feature_dim for r in rows} == {3 * 12 * 12, 512}
    assert all(np.isfinite(r.mean_return) for r in rows)  # the reward, beside the success rate
    path = write_report(config, rows, "python run_frozen_encoder.py", "test machine")
    report = path.read_text()
    assert "| encoder | reach-v3 · clean | reach-v3 · hue_shift_third |" in report and "| hue_shift_third |" in report
    saved = json.loads((tmp_path / "results.json").read_text())
    assert len(saved) == 4 and saved[1]["condition"] == "hue_shift_third"


def test_runs_written_apart_merge_into_one_table(tmp_path):
    from dataclasses import asdict

    from lerobot_env_vla_dino.frozen_benchmark import load_rows, merged_tables

    def row(task, encoder, wins):
        return BenchmarkRow(task, encoder, wins / 4, (0.1, 0.9), wins, 4, 0.1, 64, 1.0, 2.0, mean_return=wins / 2)

    runs = {"baselines": [row("reach-v3", "pixels", 1)], "ours": [row("reach-v3", "r=dino:a", 3)],
            "pusht": [row("vla_dino/PushT-v0", "pixels", 2)]}
    for name, rows in runs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps([asdict(r) for r in rows]))
    assert load_rows(tmp_path / "ours") == runs["ours"]  # the interval comes back as a tuple
    first, second = merged_tables([load_rows(tmp_path / n) for n in runs]).split("\n\n")
    assert first.splitlines()[2:] == ["| `pixels` | 1/4 (0.10–0.90) | 0.25 |", "| `r=dino:a` | 3/4 (0.10–0.90) | 0.75 |"]
    assert second.splitlines()[0] == "| encoder | vla_dino/PushT-v0 | mean |"
    (tmp_path / "resnet").mkdir()  # a run on a subset of the tasks joins their table
    (tmp_path / "resnet" / "results.json").write_text(json.dumps([asdict(row("reach-v3", "resnet18_scratch", 2))]))
    first, second = merged_tables([load_rows(tmp_path / n) for n in (*runs, "resnet")]).split("\n\n")
    assert first.splitlines()[-1] == "| `resnet18_scratch` | 2/4 (0.10–0.90) | 0.50 |" and "PushT" in second
    with pytest.raises(FileNotFoundError, match="no results.json"):
        load_rows(tmp_path)
