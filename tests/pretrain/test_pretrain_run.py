"""End-to-end runs of `vla_dino.pretrain` with a tiny ViT on generated PNG frames (CPU):
outputs, exact resume, the NaN guard, SIGTERM checkpoints, a 2-process gloo run, export."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vla_dino.data.examples import write_image_folder
from vla_dino.encoder import DinoEncoder
from vla_dino.pretrain.export import export_checkpoint, main as export_main, teacher_from_checkpoint
from vla_dino.pretrain.checkpoint import load_checkpoint
from vla_dino.pretrain.config import load_config, preset_path
from vla_dino.pretrain.errors import ConfigError
from vla_dino.pretrain.logger import read_metrics
from vla_dino.pretrain.train import NonFiniteLossError, train
from vla_dino.ssl import SSLModel

TIMING_KEYS = {"step_time_s", "frames_per_s"}


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("robot_logs")
    for episode in range(2):
        write_image_folder(root / f"episode_{episode}" / "front", num_frames=6, episode=episode)
    return root


def tiny_config(frames: Path, out: Path, **overrides):
    values = {
        "data.frames": [str(frames)], "output_dir": str(out), "data.batch_size": 4, "data.num_workers": 0,
        "train.steps": 6, "checkpoint.every_steps": 100, "log.every_steps": 1, "log.progress_bar": False,
        "log.tensorboard": False, "export.at_end": False, "ssl.optim.freeze_last_layer_steps": 1,
    }
    values.update(overrides)
    return load_config(preset_path("cpu_smoke"), values)


def losses(run: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in read_metrics(run / "metrics.jsonl")]


@pytest.fixture(scope="module")
def full_run(frames, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("full")
    config = tiny_config(frames, out, **{"log.tensorboard": True, "export.at_end": True, "checkpoint.every_steps": 2,
                                         "checkpoint.keep_last": 2})
    result = train(config)
    assert result.stopped_by == "finished" and result.step == 6
    return out


def test_run_writes_every_output(full_run: Path):
    rows = read_metrics(full_run / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 7))
    for key in ("loss", "dino_local", "dino_global", "ibot", "koleo", "teacher_entropy", "center_norm", "feature_std",
                "lr", "weight_decay", "momentum", "teacher_temp", "grad_norm"):
        assert all(isinstance(r[key], float) for r in rows), key
    assert rows[0]["lr"] == 0.0 and rows[1]["lr"] > 0  # warm-up from 0
    total = rows[-1]["dino_local"] + rows[-1]["dino_global"] + rows[-1]["ibot"] + 0.1 * rows[-1]["koleo"]
    assert rows[-1]["loss"] == pytest.approx(total, rel=1e-5)  # the recipe's weights (cpu_smoke)
    assert len((full_run / "metrics.csv").read_text().splitlines()) == 7
    assert list((full_run / "tensorboard").glob("events.out.tfevents.*"))
    assert (full_run / "loss_curve.png").stat().st_size > 1000
    assert sorted(p.name for p in (full_run / "checkpoints").glob("*.pt")) == ["step_00000004.pt", "step_00000006.pt"]
    assert "skipped: nothing" in (full_run / "skipped_samples.txt").read_text()
    assert (full_run / "export" / "hf" / "config.json").is_file() and (full_run / "export" / "teacher_backbone.pth").is_file()
    state = load_checkpoint(full_run / "checkpoints" / "step_00000006.pt")
    assert state["step"] == 6 and state["optimizer"]["state"] and isinstance(state["config"], dict)


def test_existing_run_needs_resume(frames, full_run: Path):
    with pytest.raises(FileExistsError, match="--resume"):
        train(tiny_config(frames, full_run))


def test_resume_reproduces_uninterrupted_run(frames, full_run: Path, tmp_path: Path):
    """6 steps straight == 3 steps, stop, resume to 6: same losses and metrics, same final weights."""
    out = tmp_path / "interrupted"
    first = train(tiny_config(frames, out, **{"train.stop_at_step": 3}))
    assert first.stopped_by == "stop_at_step" and first.step == 3
    second = train(tiny_config(frames, out), resume="auto")
    assert second.step == 6
    assert losses(out) == losses(full_run)
    straight = load_checkpoint(full_run / "checkpoints" / "step_00000006.pt")
    resumed = load_checkpoint(out / "checkpoints" / "step_00000006.pt")
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    assert (straight["epoch"], straight["batch_index"]) == (resumed["epoch"], resumed["batch_index"])


def test_nan_guard_skips_then_stops_with_last_good_state(frames, tmp_path: Path, monkeypatch):
    forward = SSLModel.forward

    def poisoned(self, batch, step):  # the loss turns NaN from step 2 on
        output = forward(self, batch, step)
        if step >= 2:
            output.loss = output.loss * float("nan")
        return output

    monkeypatch.setattr(SSLModel, "forward", poisoned)
    out = tmp_path / "nan"
    config = tiny_config(frames, out, **{"train.steps": 10, "train.max_nonfinite_steps": 3, "checkpoint.every_steps": 2,
                                         "checkpoint.keep_last": 5})
    with pytest.raises(NonFiniteLossError, match="3 consecutive non-finite steps.*step 2 to 4"):
        train(config)
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["skipped_step"] for r in rows] == [0, 0, 1, 1, 1] and rows[2]["loss"] == "nan"
    good, last = load_checkpoint(out / "checkpoints" / "step_00000002.pt"), load_checkpoint(out / "checkpoints" / "step_00000005.pt")
    for key, value in good["model"].items():  # no update was applied after the last good step
        assert torch.equal(value, last["model"][key]), key


def test_export_round_trip(full_run: Path, tmp_path: Path):
    from transformers import AutoModel

    written = export_main(["--checkpoint", str(full_run), "--out", str(tmp_path / "exp"), "--format", "both"])
    state = load_checkpoint(full_run / "checkpoints" / "step_00000006.pt")
    teacher = teacher_from_checkpoint(state)
    # The teacher in the checkpoint is the SSL model's teacher backbone, weight for weight.
    prefix = state["teacher_prefix"]
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, state["model"][prefix + key]), key
    pixels = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        reference = teacher(pixels)
        hf = AutoModel.from_pretrained(str(written["hf"])).eval()(pixel_values=pixels).last_hidden_state
        ours = DinoEncoder.from_pretrained(written["hf"]).eval()(pixels)
        # The official layout has no config: head count is inferred as width/64 unless given.
        official = DinoEncoder.from_pretrained(written["official"], num_attention_heads=2).eval()(pixels)
    torch.testing.assert_close(hf[:, 0], reference.cls_token, rtol=0, atol=0)
    torch.testing.assert_close(hf[:, 1:], reference.patch_tokens, rtol=0, atol=0)
    torch.testing.assert_close(ours.patch_tokens, reference.patch_tokens, rtol=0, atol=0)
    torch.testing.assert_close(official.patch_tokens, reference.patch_tokens, rtol=1e-5, atol=1e-6)
    # The end-of-run export holds the same weights.
    end = DinoEncoder.from_pretrained(full_run / "export" / "hf").eval()
    with torch.no_grad():
        torch.testing.assert_close(end(pixels).cls_token, reference.cls_token, rtol=0, atol=0)
    assert export_checkpoint(state, tmp_path / "only_hf", ["hf"]).keys() == {"hf"}


def _command(frames: Path, out: Path, *extra: str) -> list[str]:
    return ["--preset", "cpu_smoke", "--frames", str(frames), "--output-dir", str(out), "--batch-size", "4",
            "--num-workers", "0", "--set", "log.progress_bar=false", "--set", "log.tensorboard=false",
            "--set", "export.at_end=false", *extra]


def test_sigterm_saves_a_checkpoint(frames, tmp_path: Path):
    out = tmp_path / "sigterm"
    process = subprocess.Popen([sys.executable, "-m", "vla_dino.pretrain", *_command(frames, out, "--steps", "500")],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ)
    deadline = time.time() + 150
    while time.time() < deadline and len(read_metrics(out / "metrics.jsonl")) < 2 and process.poll() is None:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 143, output
    assert "SIGTERM received" in output
    state = load_checkpoint(out / "checkpoints" / f"step_{state_step(out):08d}.pt")
    assert 2 <= state["step"] < 500 and state["step"] == read_metrics(out / "metrics.jsonl")[-1]["step"]


def state_step(out: Path) -> int:
    return max(int(p.stem.split("_")[1]) for p in (out / "checkpoints").glob("step_*.pt"))


def test_two_process_gloo_run(frames, tmp_path: Path):
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "vla_dino.pretrain", *_command(frames, out, "--steps", "3", "--device", "cpu",
                                                    "--frame-cache", str(tmp_path / "cache"))]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # the two ranks decoded a source each into the shared frame cache (frames + ok flags per source)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 4 and "frame cache" in result.stderr
    state = load_checkpoint(out / "checkpoints" / "step_00000003.pt")
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])  # per-rank augmentation streams
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3] and all(isinstance(r["loss"], float) for r in rows)
    assert "1 process" not in result.stderr and "2 process(es)" in result.stderr


def test_train_compile_compiles_student_and_teacher_in_place(frames, tmp_path: Path, monkeypatch):
    """train.compile reaches torch.compile for both networks with the mode asked for (the compiled
    step itself is checked against eager in tests/ssl/test_ssl_trainer.py)."""
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **options: compiled.append((type(self).__name__, options)))
    config = tiny_config(frames, tmp_path / "run", **{"train.steps": 1, "train.compile": True,
                                                      "train.compile_mode": "max-autotune-no-cudagraphs"})
    train(config)
    assert compiled == [("SSLNetwork", {"mode": "max-autotune-no-cudagraphs"})] * 2
    with pytest.raises(ValueError, match=r"train.compile_mode must be default\|reduce-overhead.*\(got 'fast'\)"):
        tiny_config(frames, tmp_path / "bad", **{"train.compile_mode": "fast"})


def test_gpu_jpeg_decode_on_a_cpu_run_is_refused(frames, tmp_path: Path):
    with pytest.raises(ConfigError, match="data.decode_device=cuda .* trains on cpu"):
        train(tiny_config(frames, tmp_path / "run", **{"data.decode_device": "cuda", "train.device": "cpu"}))
