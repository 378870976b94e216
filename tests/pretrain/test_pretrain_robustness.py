"""A messy robot_logs folder, as a new user would bring it: the run never hangs, never loses more
than a checkpoint interval, and explains every failure in one line (tiny ViT, CPU, generated PNGs)."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vla_dino.data import FrameDataset
from vla_dino.data.examples import write_image_folder
from vla_dino.pretrain.checkpoint import load_checkpoint
from vla_dino.pretrain.config import load_config, preset_path
from vla_dino.pretrain.errors import DataError, ResumeError
from vla_dino.pretrain.logger import read_metrics
from vla_dino.pretrain.sampler import ResumableBatchSampler
from vla_dino.pretrain.skips import read_skips
from vla_dino.pretrain.train import train
from vla_dino.ssl import SSLTrainer

CLI_TIMEOUT = 240  # seconds: a hang fails the test instead of blocking the suite


def _write_frames(root: Path, episodes: int = 2, frames: int = 6, truncated: int = 0) -> Path:
    for episode in range(episodes):
        paths = write_image_folder(root / f"episode_{episode}" / "front", num_frames=frames, episode=episode)
        for path in paths[:truncated]:  # the header opens, the pixel data is cut short
            path.write_bytes(path.read_bytes()[:80])
    return root


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> Path:
    return _write_frames(tmp_path_factory.mktemp("logs"))  # 12 frames


@pytest.fixture(scope="module")
def interrupted(frames, tmp_path_factory) -> Path:
    """A run at batch 4 stopped at step 4 of 8: epoch 1, 4 samples into it (12 frames, 3 batches an epoch)."""
    out = tmp_path_factory.mktemp("interrupted") / "run"
    result = train(tiny_config(frames, out, **{"train.steps": 8, "train.stop_at_step": 4}))
    assert result.stopped_by == "stop_at_step" and result.step == 4
    return out


def tiny_config(frames: Path | list[Path], out: Path, **overrides):
    values = {
        "data.frames": [str(f) for f in (frames if isinstance(frames, list) else [frames])], "output_dir": str(out),
        "data.batch_size": 4, "data.num_workers": 0, "train.steps": 6, "checkpoint.every_steps": 100,
        "log.every_steps": 1, "log.progress_bar": False, "log.tensorboard": False, "export.at_end": False,
        "ssl.optim.freeze_last_layer_steps": 1,
    }
    values.update(overrides)
    return load_config(preset_path("cpu_smoke"), values)


def _copy(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(run, target)
    return target


def _cli(*args: str, timeout: int = CLI_TIMEOUT) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "vla_dino.pretrain", "--preset", "cpu_smoke", "--num-workers", "0",
               "--set", "log.progress_bar=false", "--set", "log.tensorboard=false", "--set", "export.at_end=false", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    """The expected-error contract: one `error: …` line on stderr, no traceback."""
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    return errors[0]


# ------------------------------------------------------------------ never hangs
def test_all_unreadable_frames_stop_with_a_checkpoint_instead_of_hanging(tmp_path: Path):
    """Every file truncated (headers fine, so only reading finds out): each batch is empty; the run
    used to loop forever here. Now: an epoch of empty batches, a checkpoint, exit 3, one line."""
    logs = _write_frames(tmp_path / "logs", episodes=1, frames=6, truncated=6)
    out = tmp_path / "run"
    result = _cli("--frames", str(logs), "--output-dir", str(out), "--batch-size", "2", "--steps", "50")
    assert result.returncode == 3, result.stderr[-3000:]
    line = _one_error_line(result)
    assert "3 batches in a row had fewer than 2 readable frame(s) (a whole epoch); stopping at step 0" in line
    state = load_checkpoint(out / "checkpoints" / "step_00000000.pt")
    assert (state["epoch"], state["batch_index"]) == (1, 0) and state["skipped_batches_total"] == 3
    assert state["skipped_samples_total"] == 6
    records = [r for r in read_skips(out / "skipped_samples.txt") if r[0] != "startup"]
    assert sorted(Path(file).name for _, file, _ in records) == sorted(f"frame_{t}.png" for t in range(6))

    # Files that are not images at all are refused by the start-up scan, before any model is built.
    for path in (logs / "episode_0" / "front").iterdir():
        path.write_bytes(b"garbage")
    result = _cli("--frames", str(logs), "--output-dir", str(tmp_path / "run2"), "--batch-size", "1",
                  "--set", "ssl.loss.koleo_weight=0")
    assert result.returncode == 3
    line = _one_error_line(result)
    assert "no readable frames in --frames" in line and "6 file(s)/source(s) found, none readable" in line
    assert "not a readable image" in line


def test_the_loop_agrees_on_stops_and_skips_in_one_collective_per_step(frames, tmp_path: Path, monkeypatch):
    """Signals and short batches share one all-reduce per step (under torchrun each is a host sync)."""
    from vla_dino.pretrain import distributed

    agreed = []
    real = distributed.any_ranks
    monkeypatch.setattr(distributed, "any_ranks", lambda flags, info: agreed.append(flags) or real(flags, info))
    result = train(tiny_config(frames, tmp_path / "run", **{"train.steps": 5}))
    assert result.step == 5 and agreed == [(False, False)] * 5


def test_the_loop_reads_each_step_back_while_the_next_one_runs(frames, tmp_path: Path, monkeypatch):
    """No host wait per step: step i's values are read only after step i + 1 is queued, except where
    the model must be read right after the step (here the end of the run, a checkpoint)."""
    import vla_dino.pretrain.train as train_module

    events = []
    real_step, real_settle = SSLTrainer.step, train_module._settle

    def step(self, crops, index):
        events.append(("queue", index))
        return real_step(self, crops, index)

    def settle(run, queued, progress):
        events.append(("read", queued.start.step))
        real_settle(run, queued, progress)

    monkeypatch.setattr(SSLTrainer, "step", step)
    monkeypatch.setattr(train_module, "_settle", settle)
    train(tiny_config(frames, tmp_path / "run", **{"train.steps": 5}))
    assert events == [("queue", 0), ("queue", 1), ("read", 0), ("queue", 2), ("read", 1), ("queue", 3), ("read", 2),
                      ("queue", 4), ("read", 3), ("read", 4)]


def test_one_loader_serves_the_whole_run_with_each_epochs_neighbours(frames, tmp_path: Path, monkeypatch):
    """The batch stream builds one DataLoader (its workers start once, not at every epoch); across epoch
    boundaries, from mid-epoch on, workers serve the batches in-process loading does, with temporal
    neighbours drawn for each batch's own epoch."""
    import vla_dino.pretrain.train as train_module
    from vla_dino.pretrain import distributed as D
    from vla_dino.pretrain.train import TrainPosition, batch_stream, open_frames

    loaders = []
    real_loader = train_module.DataLoader

    def loader(*args, **kwargs):
        loaders.append(kwargs["num_workers"])
        return real_loader(*args, **kwargs)

    monkeypatch.setattr(train_module, "DataLoader", loader)
    streams = []
    for workers in (0, 2):
        config = tiny_config(frames, tmp_path / f"w{workers}", **{"data.num_workers": workers, "data.neighbor_offset": 2})
        info = D.DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
        _, dataset, _ = open_frames(config, info)
        sampler = ResumableBatchSampler(len(dataset), config.data.batch_size, config.train.seed)
        stream = batch_stream(dataset, sampler, TrainPosition(0, epoch=1, batch_in_epoch=2), config, info.device)
        rows = [(b["index"].tolist(), b["neighbor_frame_index"].tolist(), b["frame"].sum().item(), position)
                for b, position in (next(stream) for _ in range(7))]  # 3 batches an epoch: 3 boundaries
        streams.append(rows)
        epochs = [1, 2, 2, 2, 3, 3, 3]  # the epoch each batch belongs to
        for (indices, neighbours, _, _), epoch in zip(rows, epochs):
            assert neighbours == [dataset.neighbor_frame(i, epoch) for i in indices]
    assert streams[0] == streams[1] and loaders == [0, 2]  # one loader per stream
    assert [position for *_, position in streams[0]][:4] == [(2, 0), (2, 1), (2, 2), (3, 0)]


def test_a_signal_stops_the_run_before_the_fetched_batch(frames, tmp_path: Path, monkeypatch):
    """A signal during a step stops the run at the next step's agreement; the batch fetched for it is
    not trained on, and the checkpoint's position puts it first for the resume."""
    real_step = SSLTrainer.step

    def step(self, crops, index):
        result = real_step(self, crops, index)
        if index == 1:  # the signal arrives while the second step runs
            os.kill(os.getpid(), signal.SIGTERM)
        return result

    monkeypatch.setattr(SSLTrainer, "step", step)
    out = tmp_path / "run"
    result = train(tiny_config(frames, out, **{"train.steps": 6}))
    assert result.stopped_by == "SIGTERM" and result.step == 2
    state = load_checkpoint(out / "checkpoints" / "step_00000002.pt")
    assert state["batch_index"] == 2 and state["data_position"]["samples_done"] == 8  # 2 batches of 4 trained on


def test_a_signal_is_honoured_on_the_skipped_batch_path(frames, tmp_path: Path, monkeypatch):
    """SIGTERM while batches come back empty: the run saves and leaves (it used to need a second signal)."""
    calls = []

    def unreadable(self, index):
        calls.append(index)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return None

    monkeypatch.setattr(FrameDataset, "__getitem__", unreadable)
    out = tmp_path / "run"
    result = train(tiny_config(frames, out, **{"train.max_empty_batches": 1000}))
    assert result.stopped_by == "SIGTERM" and result.step == 0
    state = load_checkpoint(out / "checkpoints" / "step_00000000.pt")
    assert state["batch_index"] == 1 and state["data_position"]["samples_done"] == 4  # the empty batch is behind it
    assert len(calls) == 4  # one batch read, then out


def test_dataset_smaller_than_one_batch_is_refused_with_the_numbers(frames, tmp_path: Path):
    with pytest.raises(DataError) as error:
        train(tiny_config(frames, tmp_path / "run", **{"data.batch_size": 16}))
    assert str(error.value) == (
        "not enough frames for one step: 12 readable frame(s) in 2 source(s) (0 unreadable file(s) left out), but one "
        "step takes data.batch_size 16 × 1 process(es) = 16; lower --batch-size to at most 12"
    )
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_start_up_report_is_logged_before_training(frames, tmp_path: Path, caplog):
    logs = _write_frames(tmp_path / "logs", episodes=2, frames=4, truncated=0)
    (logs / "episode_1" / "front" / "frame_9.png").write_bytes(b"not an image")
    with caplog.at_level(logging.INFO, logger="vla_dino"):
        train(tiny_config([logs, logs / "episode_0"], tmp_path / "run", **{"train.steps": 1}))
    text = caplog.text
    assert "frames: 8 readable in 2 episode-camera source(s), 1 unreadable file(s) left out" in text
    assert "camera front: 2 episode(s), 8 frame(s), 1 unreadable file(s)" in text
    assert "reached through more than one --frames path" in text  # episode_0 counted once
    assert "8 frames from 2 readable sources" in text


# ------------------------------------------------------------------ resume
@pytest.mark.parametrize("batch, message, next_position", [
    (2, "global batch 4 → 2: epoch 1 continues after sample 4 of 12 (batch 2 of 6)", (1, 2)),
    (8, "global batch 4 → 8: epoch 1 continues after sample 4 of 12 (batch 0 of 1); 4 frame(s) of this epoch are seen again", (1, 0)),
])
def test_resume_with_another_batch_size(frames, interrupted, tmp_path: Path, caplog, batch, message, next_position):
    run = _copy(interrupted, tmp_path)
    with caplog.at_level(logging.WARNING, logger="vla_dino"):
        result = train(tiny_config(frames, run, **{"train.steps": 8, "data.batch_size": batch}), resume="auto")
    assert result.stopped_by == "finished" and result.step == 8
    assert message in caplog.text
    assert "resume: data.batch_size was 4 in step_00000004.pt, now " + str(batch) in caplog.text
    first_resumed = load_checkpoint(run / "checkpoints" / "step_00000008.pt")["data_position"]
    assert first_resumed["global_batch"] == batch
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == list(range(1, 9))
    epoch, index = next_position  # 4 more steps from there
    assert first_resumed["samples_done"] == ((index + 4) % (12 // batch)) * batch


def test_resume_with_another_frame_list_restarts_the_epoch(frames, interrupted, tmp_path: Path, caplog):
    run = _copy(interrupted, tmp_path)
    more = _write_frames(tmp_path / "more", episodes=1, frames=6)
    with caplog.at_level(logging.WARNING, logger="vla_dino"):
        result = train(tiny_config([frames, more], run, **{"train.steps": 6}), resume="auto")
    assert result.step == 6
    assert "the frame list changed (12 → 18 frames), so the position in epoch 1 means nothing now: restarting epoch 1" in caplog.text
    assert "resume: data.frames was" in caplog.text
    state = load_checkpoint(run / "checkpoints" / "step_00000006.pt")
    assert (state["epoch"], state["batch_index"]) == (1, 2) and state["data_position"]["num_samples"] == 18


def test_changed_architecture_is_refused_in_one_line(interrupted, frames, tmp_path: Path):
    run = _copy(interrupted, tmp_path)
    result = _cli("--frames", str(frames), "--output-dir", str(run), "--batch-size", "4", "--steps", "8", "--resume",
                  "--set", "ssl.heads.num_prototypes=512")
    assert result.returncode == 4
    line = _one_error_line(result)
    assert "size mismatch" not in result.stderr
    assert line.startswith(f"error: cannot resume from {run / 'checkpoints' / 'step_00000004.pt'}: its weights do not fit")
    assert "Changed since the checkpoint: ssl.heads.num_prototypes was 256, now 512" in line
    with pytest.raises(ResumeError, match="model.init was 'tiny', now 'vits14'"):
        train(tiny_config(frames, run, **{"train.steps": 8, "model.init": "vits14"}), resume="auto")


def test_changed_optimiser_options_apply_after_resume(interrupted, frames, tmp_path: Path):
    """torch restores the saved per-group options; the resume keeps this config's (the warning is true)."""
    run = _copy(interrupted, tmp_path)
    train(tiny_config(frames, run, **{"train.steps": 5, "ssl.optim.patch_embed_lr_mult": 0.5}), resume="auto")
    groups = load_checkpoint(run / "checkpoints" / "step_00000005.pt")["optimizer"]["param_groups"]
    before = load_checkpoint(interrupted / "checkpoints" / "step_00000004.pt")["optimizer"]["param_groups"]
    ratio = {round(b["lr_mult"] / a["lr_mult"], 6) for a, b in zip(before, groups) if a["lr_mult"] != b["lr_mult"]}
    assert ratio == {2.5}  # the patch-embedding groups: 0.2 → 0.5


def test_steps_below_the_checkpoint_is_an_error(interrupted, frames, tmp_path: Path):
    with pytest.raises(ResumeError, match="train.steps=3 is below the checkpoint's step 4 .*: there is nothing to train"):
        train(tiny_config(frames, _copy(interrupted, tmp_path), **{"train.steps": 3}), resume="auto")


def test_damaged_latest_checkpoint_falls_back_to_the_previous(frames, tmp_path: Path, caplog):
    out = tmp_path / "run"
    train(tiny_config(frames, out, **{"train.steps": 6, "train.stop_at_step": 4, "checkpoint.every_steps": 2}))
    latest = out / "checkpoints" / "step_00000004.pt"
    latest.write_bytes(latest.read_bytes()[:1000])  # a copy cut short
    with caplog.at_level(logging.INFO, logger="vla_dino"):
        result = train(tiny_config(frames, out, **{"train.steps": 6, "checkpoint.every_steps": 2}), resume="auto")
    assert result.step == 6
    assert f"checkpoint {latest} is damaged: truncated or overwritten" in caplog.text
    assert (out / "checkpoints" / "damaged" / "step_00000004.pt").is_file()
    assert "resuming from" in caplog.text and "step_00000002.pt (step 2)" in caplog.text
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == list(range(1, 7))


# ------------------------------------------------------------------ skips as metrics
def test_skips_are_metrics_and_kept_across_resumes(tmp_path: Path):
    logs = _write_frames(tmp_path / "logs", episodes=2, frames=6, truncated=1)  # 2 of 12 frames unreadable

    def run(out: Path, **extra) -> list[dict]:
        train(tiny_config(logs, out, **{"train.steps": 6, "checkpoint.every_steps": 2, **extra}),
              resume="auto" if (out / "checkpoints").exists() else None)
        return read_metrics(out / "metrics.jsonl")

    straight = run(tmp_path / "straight")
    run(tmp_path / "resumed", **{"train.stop_at_step": 3})
    resumed = run(tmp_path / "resumed")
    for rows in (straight, resumed):
        per_step = [r["skipped_samples"] for r in rows]
        assert rows[-1]["skipped_samples_total"] == sum(per_step) == 4  # 6 steps × 4 = 24 samples = 2 epochs
        assert [r["skipped_samples_total"] for r in rows] == [sum(per_step[: i + 1]) for i in range(6)]
    assert [r["skipped_samples"] for r in straight] == [r["skipped_samples"] for r in resumed]
    records = {name: [(s, Path(f).name) for s, f, _ in read_skips(tmp_path / name / "skipped_samples.txt")]
               for name in ("straight", "resumed")}
    assert len(records["straight"]) == 4 and records["resumed"] == records["straight"]
    assert "# session" in (tmp_path / "resumed" / "skipped_samples.txt").read_text()
    assert (tmp_path / "resumed" / "skipped_samples.txt").read_text().count("resumed from") == 1


# ------------------------------------------------------------------ one error path
def test_expected_errors_are_one_line_with_distinct_exit_codes(frames, interrupted, tmp_path: Path):
    cases = [
        (["--frames", str(tmp_path / "nowhere"), "--output-dir", str(tmp_path / "a")], 3, "no such file or folder"),
        (["--frames", str(frames), "--output-dir", str(interrupted)], 4, "already holds checkpoints"),
        (["--frames", str(frames), "--output-dir", str(interrupted), "--resume", "--steps", "2"], 4,
         "below the checkpoint's step 4"),
        (["--frames", str(frames), "--device", "gpu"], 2, "train.device must be auto|cpu|cuda|cuda:N|mps (got 'gpu')"),
        (["--frames", str(frames), "--batch-size", "1"], 2, "KoLeo compares each frame with its nearest neighbour"),
        (["--frames", str(frames), "--steps", "5", "--set", "train.steps=7"], 2,
         "train.steps is given twice with different values: --set train.steps=7 and --steps 5"),
        (["--frames", str(frames), "--ssl.optim.base_lr", "-1"], 2, "ssl.optim.base_lr must be > 0 (got -1.0)"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--frames", str(frames), "--output-dir", str(tmp_path / "b"), "--device", "cuda"], 5,
                      "CUDA is not available"))
    for args, code, text in cases:
        result = _cli(*args)
        assert result.returncode == code, (args, result.stderr[-2000:])
        assert text in _one_error_line(result), args
    debug = _cli("--frames", str(tmp_path / "nowhere"), "--output-dir", str(tmp_path / "c"), "--debug")
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "DataError" in debug.stderr


# ------------------------------------------------------------------ kill -9 / SIGTERM matrix
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "SIGTERM"])
@pytest.mark.parametrize("change", ["batch_size", "frames"])
def test_kill_and_resume_with_changed_batch_or_frames(frames, tmp_path: Path, sig, change):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "vla_dino.pretrain", "--preset", "cpu_smoke", "--frames", str(frames),
               "--output-dir", str(out), "--batch-size", "4", "--num-workers", "0", "--steps", "500",
               "--set", "checkpoint.every_steps=2", "--set", "log.progress_bar=false", "--set", "log.tensorboard=false",
               "--set", "export.at_end=false"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + CLI_TIMEOUT
    while time.time() < deadline and len(read_metrics(out / "metrics.jsonl")) < 5 and process.poll() is None:
        time.sleep(0.2)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=CLI_TIMEOUT)
    assert process.returncode == (143 if sig == signal.SIGTERM else -9), stderr[-3000:]
    saved = max(int(p.stem.split("_")[1]) for p in (out / "checkpoints").glob("step_*.pt"))
    assert saved >= 4

    extra = {"data.batch_size": 8} if change == "batch_size" else {}
    paths = [frames, _write_frames(tmp_path / "more", episodes=1, frames=6)] if change == "frames" else frames
    target = saved + 3
    result = train(tiny_config(paths, out, **{"train.steps": target, "checkpoint.every_steps": 2, **extra}), resume="auto")
    assert result.stopped_by == "finished" and result.step == target
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, target + 1))  # rows past the checkpoint were dropped, none twice
    state = load_checkpoint(out / "checkpoints" / f"step_{target:08d}.pt")
    assert state["data_position"]["global_batch"] == (8 if change == "batch_size" else 4)
    assert state["data_position"]["num_samples"] == (18 if change == "frames" else 12)


def test_a_run_with_a_frame_cache_gets_the_batches_decoding_gives(frames, tmp_path: Path, caplog):
    """`data.frame_cache`: the start-up decodes every source into the folder once (a second run reuses it), and
    the loop's batches are the ones decoding every read gives; a folder that cannot be written is a DataError."""
    from vla_dino.pretrain import distributed as D
    from vla_dino.pretrain.train import TrainPosition, batch_stream, open_frames

    info = D.DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    batches = []
    for cache in (None, tmp_path / "cache", tmp_path / "cache"):
        config = tiny_config(frames, tmp_path / "run", **{"data.frame_cache": None if cache is None else str(cache)})
        with caplog.at_level(logging.INFO, logger="vla_dino.pretrain"):
            _, dataset, _ = open_frames(config, info)
        assert (dataset.frame_cache is None) == (cache is None)
        sampler = ResumableBatchSampler(len(dataset), config.data.batch_size, config.train.seed)
        stream = batch_stream(dataset, sampler, TrainPosition(0, epoch=0, batch_in_epoch=0), config, info.device)
        batches.append([next(stream)[0]["frame"] for _ in range(3)])
    assert "2 source(s) decoded now, 0 reused" in caplog.text and "0 source(s) decoded now, 2 reused" in caplog.text
    for cached in batches[1:]:
        assert all(torch.equal(a, b) for a, b in zip(batches[0], cached))

    (tmp_path / "a_file").write_text("")
    config = tiny_config(frames, tmp_path / "run", **{"data.frame_cache": str(tmp_path / "a_file" / "cache")})
    with pytest.raises(DataError, match="data.frame_cache .*a_file/cache: cannot write the decoded frames there"):
        open_frames(config, info)
