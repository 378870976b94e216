"""The README's main command end to end at toy scale: every stage runs through the real CLIs
(vla_dino.pretrain, lerobot-train) and the report is written; a second run reuses the stages."""

import json

import pytest

from vla_dino import demo


@pytest.mark.slow
def test_demo_runs_every_stage_and_reuses_them(tmp_path, capsys):
    argv = [
        "--out-dir", str(tmp_path / "demo"), "--task", "reach-v3", "--num-demos", "2", "--pusht-episodes", "1",
        "--frame-size", "56", "--pretrain-steps", "4", "--policy-steps", "4", "--policy-batch-size", "4",
        "--eval-episodes", "2", "--eval-max-steps", "10",
    ]
    report = demo.main(argv)
    out = tmp_path / "demo"
    assert report == out / "report.md"
    text = report.read_text()
    for picture in ("loss_curves.png", "features_before_after.png", "probe_and_success.png"):
        assert (out / "6_report" / picture).stat().st_size > 1000
        assert f"6_report/{picture}" in text
    probe = json.loads((out / "3_probe" / "stage.json").read_text())
    assert set(probe) >= {"pretrained", "random_init"}
    assert {"hand_pos", "goal_pos"} <= set(probe["pretrained"]["r2"])
    rollout = json.loads((out / "5_rollout" / "stage.json").read_text())
    for name in ("pretrained", "random_init"):
        assert rollout[name]["num_episodes"] == 2
        assert 0.0 <= rollout[name]["success_rate"] <= 1.0
        assert (out / "4_policy" / name / "checkpoints" / "last" / "pretrained_model" / "config.json").is_file()
    assert "| pretrained |" in text and "| random_init |" in text

    capsys.readouterr()
    demo.main(argv)  # second run: every stage but the report is reused
    printed = capsys.readouterr().out
    for stage in ("collect", "pretrain", "probe", "policy", "rollout"):
        assert f"[{stage}] reusing" in printed
