"""The README's main command end to end at toy scale: every stage runs through the real CLIs
(vla_dino.pretrain, lerobot-train) and the report is written; a second run reuses the stages."""

import json

import pytest

from lerobot_env_vla_dino import demo


@pytest.mark.slow
def test_demo_runs_every_stage_and_reuses_them(tmp_path, capsys):
    argv = [
        "--out-dir", str(tmp_path / "demo"), "--task", "reach-v3", "--num-demos", "2", "--pretrain-episodes", "3",
        "--benchmark-episodes", "12", "--scene-max-steps", "20", "--benchmark-budgets", "3", "6",
        "--benchmark-dense-budgets", "2", "--resnet-steps", "2",
        "--frame-size", "56", "--pretrain-steps", "4", "--policy-steps", "4", "--policy-batch-size", "4",
        "--eval-episodes", "2", "--eval-max-steps", "10",
    ]
    report = demo.main(argv)
    out = tmp_path / "demo"
    assert report == out / "report.md"
    text = report.read_text()
    for picture in ("benchmark_probes.png", "probe_vs_step.png", "loss_curves.png", "features_before_after.png", "success.png"):
        assert (out / "6_report" / picture).stat().st_size > 1000
        assert f"6_report/{picture}" in text
    # the report leads with the benchmark table: pretrained, its random-init range, pixels, ResNet-18
    assert text.index("### State probes") < text.index("## Pretraining")
    benchmark = json.loads((out / "3_probe" / "results.json").read_text())
    groups = [row["group"] for row in benchmark]
    assert sum(g.startswith("random init of") for g in groups) == 3
    assert "pixels" in groups and "ResNet-18 from scratch (end to end)" in groups
    assert set(benchmark[0]["state"]) == {"clean", "across", "heldout"}
    probe_rows = [json.loads(line) for line in (out / "2_pretrain" / "run" / "probe.jsonl").read_text().splitlines()]
    assert probe_rows[0]["step"] == 0 and "probe/pixels_retrieval_changed" in probe_rows[0]
    rollout = json.loads((out / "5_rollout" / "stage.json").read_text())
    for name in ("pretrained", "random_init"):
        assert rollout[name]["num_episodes"] == 2
        assert 0.0 <= rollout[name]["success_rate"] <= 1.0
        assert (out / "4_policy" / name / "checkpoints" / "last" / "pretrained_model" / "config.json").is_file()
    assert "| pretrained |" in text and "| random_init |" in text and "| pixels |" in text

    capsys.readouterr()
    demo.main(argv)  # second run: every stage but the report is reused
    printed = capsys.readouterr().out
    for stage in ("collect", "pretrain", "probe", "policy", "rollout"):
        assert f"[{stage}] reusing" in printed


def test_every_demo_config_field_is_a_documented_flag(capsys):
    from dataclasses import fields
    from pathlib import Path

    config = demo.parse_args(["--out-dir", "x", "--restart", "--benchmark-budgets", "3", "6", "--pretrain-steps", "null"])
    assert config.out_dir == Path("x") and config.restart and config.benchmark_budgets == (3, 6)
    assert config.pretrain_steps is None and demo.parse_args([]) == demo.DemoConfig()
    with pytest.raises(SystemExit):
        demo.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for item in fields(demo.DemoConfig):
        assert "--" + item.name.replace("_", "-") in text, item.name
    assert "(default: 1000)" in text and "(default: 25 50)" in text and "delete --out-dir and start over" in text
    with pytest.raises(SystemExit):
        demo.parse_args(["--num-demos", "many"])
    assert "num_demos" in capsys.readouterr().err
