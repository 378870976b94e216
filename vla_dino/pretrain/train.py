"""The pretraining loop, readable top to bottom.

    frames (start-up scan, one DataLoader over the sharded resumable sampler, next batch copied to the
    GPU while a step runs) → multi-crop on the training device → `SSLTrainer.step` (forward under
    autocast → backward → clip → non-finite guard → fused AdamW → EMA teacher; nothing read back) →
    the previous step's values read back → logs / collapse monitor / checkpoints → exported teacher

`train(config, resume)` is the whole run; `python -m vla_dino.pretrain` parses the command
line into a `PretrainConfig` and calls it (also under torchrun, one call per process).
`_train` reads top to bottom: `_set_up` (data, model, trainer, resume) → the loop over batches
(`_settle` → `_log_step`, `_save` at a `TrainPosition`) → `_finish`.

The run stops only for a reason it states (vla_dino/pretrain/errors.py) and never loses more than
one checkpoint interval: every path through the loop, including batches skipped because no frame
could be read, checks the stop signals, and every stop saves a checkpoint first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from vla_dino.data import (
    DevicePrefetcher,
    FrameCache,
    FrameDataset,
    FrameSource,
    JpegBatchDecoder,
    NoFramesError,
    ScanResult,
    collate_frames,
    discover_sources,
    scan_sources,
)
from vla_dino.device import resolve_dtype
from vla_dino.encoder import DinoEncoder
from vla_dino.pretrain import distributed as D
from vla_dino.pretrain.checkpoint import (
    CheckpointManager,
    capture_rng_state,
    checkpoint_folder,
    load_checkpoint,
    load_latest,
    restore_rng_state,
    seed_everything,
)
from vla_dino.pretrain.config import PretrainConfig, dump_config
from vla_dino.pretrain.errors import ConfigError, DataError, NonFiniteLossError, OutputExistsError, ResumeError
from vla_dino.pretrain.export import export_encoder, teacher_from_state
from vla_dino.pretrain.logger import MetricsLogger, plot_loss_curve
from vla_dino.pretrain.monitor import CollapseMonitor, NonFiniteGuard
from vla_dino.pretrain.probe import ProbeFrames, ProbeMonitor, hold_out_sources, load_probe_frames, pixel_retrieval, probe_teacher
from vla_dino.pretrain.sampler import ResumableBatchSampler
from vla_dino.pretrain.skips import SkipLog
from vla_dino.ssl import MultiCropAugmentation, SSLModel, SSLTrainer
from vla_dino.ssl.trainer import HostCopy, StepValues

log = logging.getLogger("vla_dino.pretrain")

CHECKPOINT_FORMAT = 1

__all__ = ["NonFiniteLossError", "RunResult", "train", "build_encoder"]


@dataclass
class RunResult:
    output_dir: Path
    step: int  # optimiser steps completed (skipped non-finite steps included)
    stopped_by: str  # "finished" | "stop_at_step" | "SIGTERM" | "SIGINT"
    checkpoint: Path | None = None
    exported: dict[str, Path] = field(default_factory=dict)
    skipped_samples: int = 0  # unreadable samples met by this process run (all ranks)
    skipped_samples_total: int = 0  # over the whole run, across resumes


def train(config: PretrainConfig, resume: str | None = None) -> RunResult:
    """Run (or continue) pretraining. `resume`: None (fresh run), "auto" (latest checkpoint in
    `output_dir`, fresh if there is none), a run / checkpoints folder (its newest good checkpoint)
    or a checkpoint file. Expected failures raise `errors.PretrainError` subclasses."""
    try:
        config.validate()
    except ValueError as error:
        raise ConfigError(str(error)) from error
    info = D.init_distributed(config.train.device, config.distributed.backend)
    threads = torch.get_num_threads()  # _train may lower it on CPU; callers get theirs back
    try:
        return _train(config, resume, info)
    finally:
        torch.set_num_threads(threads)
        D.cleanup()


@dataclass
class TrainPosition:
    """Where the run stands: what a checkpoint saves and a resume continues from."""

    step: int = 0  # optimiser steps done (skipped non-finite steps included)
    epoch: int = 0  # the epoch of the next batch
    batch_in_epoch: int = 0  # the next batch's index in its epoch


@dataclass
class SkipCounts:
    """Unreadable samples and unusable batches (fewer readable frames than a step needs)."""

    samples_before: int = 0  # totals of the run before this process (from the checkpoint)
    batches_before: int = 0
    samples: int = 0  # this process
    batches: int = 0
    since_log: int = 0  # samples since the last logged row
    pending: list[tuple[int, str, str]] = field(default_factory=list)  # (step, file, reason), written at the next save


@dataclass
class _Run:
    """What the set-up builds and the loop, the saves and the logs read."""

    config: PretrainConfig
    info: D.DistInfo
    out: Path
    resumed: bool
    scan: ScanResult
    dataset: FrameDataset
    sampler: ResumableBatchSampler
    fingerprint: str
    probe_frames: ProbeFrames | None
    model: SSLModel
    trainer: SSLTrainer
    augment: MultiCropAugmentation
    precision: str
    teacher_prefix: str
    checkpoints: CheckpointManager
    guard: NonFiniteGuard
    monitor: CollapseMonitor
    probe_monitor: ProbeMonitor
    skips: SkipCounts
    stop_step: int
    min_frames: int  # KoLeo needs a nearest neighbour in the batch: a batch thinned to one frame is unusable
    empty_limit: int
    last_read_at: float = 0.0  # when the loop last read a step's values back
    logger: MetricsLogger | None = None  # rank 0
    skip_log: SkipLog | None = None  # rank 0
    probe_logger: MetricsLogger | None = None  # rank 0, with probe frames


def _train(config: PretrainConfig, resume: str | None, info: D.DistInfo) -> RunResult:
    run, position = _set_up(config, resume, info)
    # CUDA: the next batch is copied (and its JPEGs decoded) on a side stream while the step runs; CPU: pass-through
    batches = DevicePrefetcher(batch_stream(run.dataset, run.sampler, position, config, info.device), info.device)
    progress = tqdm(total=run.stop_step, initial=position.step, disable=not (info.is_main and config.log.progress_bar), unit="step")
    stop_signal = _StopSignal()
    stopped_by, last_saved = "finished", None
    empty_streak = 0
    pending: _QueuedStep | None = None  # the step on the device whose values the host has not read yet
    run.model.train()
    if run.probe_frames is not None and not run.resumed:
        _run_probe(run, 0)  # the starting point (random init or the checkpoint) for the probe curve
    try:
        while position.step < run.stop_step:
            t0 = time.perf_counter()
            before = position.epoch, position.batch_in_epoch
            batch, (position.epoch, position.batch_in_epoch) = next(batches)
            # one collective per step: every rank stops together on a signal, and skips a batch with
            # too few frames together (a rank without frames cannot join the step's collectives)
            signalled, short = D.any_ranks((stop_signal.received is not None, batch["frame"].shape[0] < run.min_frames), info)
            if signalled and not short:
                position.epoch, position.batch_in_epoch = before  # fetched, not trained on: a resume takes it first
            elif short:  # no step will read it back: its skips count now (a trained batch's, when its step is read)
                _take_skips(run, batch, position.step)
            if signalled:
                _drain(run, pending, position, progress)
                pending = None
                last_saved = _save(run, position)
                stopped_by = stop_signal.received or "signal"
                break
            if short:  # the next batch, bounded
                empty_streak += 1
                run.skips.batches += 1
                if empty_streak >= run.empty_limit:
                    _drain(run, pending, position, progress)
                    pending = None
                    last_saved = _save(run, position)
                    D.barrier(info)
                    raise DataError(
                        f"{empty_streak} batches in a row had fewer than {run.min_frames} readable frame(s) "
                        f"({'a whole epoch' if empty_streak >= run.sampler.batches_per_epoch else 'train.max_empty_batches'}); "
                        f"stopping at step {position.step}. Saved {last_saved or run.checkpoints.path_for(position.step)}; the "
                        f"unreadable files are listed in {run.out / 'skipped_samples.txt'}. Fix or remove them, then continue "
                        f"with --resume"
                    )
                continue
            empty_streak = 0

            frames = batch["frame"].to(info.device, non_blocking=True)
            neighbors = batch["neighbor"].to(info.device, non_blocking=True) if config.data.neighbor_offset > 0 else None
            result = run.trainer.step(run.augment(frames, neighbors), position.step)
            start = TrainPosition(position.step, *before)
            position.step += 1
            queued = _QueuedStep(result.to_host(), start, dataclasses.replace(position), batch, frames.shape[0], t0)
            progress.update(1)

            # ------------------------------------------------------------ reading steps back, one late
            # The host reads a step's values while the next step runs: reading them at once would leave the
            # device idle while the host fetches and queues the next batch. The previous step is read now.
            if pending is not None:
                _settle(run, pending, progress)
            pending = queued
            if run.guard.should_stop:
                # the previous step completed the streak, so the device skipped this one (SSLTrainer's halt):
                # undo it, and a resume trains on its batch
                position, pending = dataclasses.replace(start), None
                _stop_on_nonfinite(run, position)
            # Checkpoints and probes read the model after this step: read it back first.
            save_due = position.step % config.checkpoint.every_steps == 0 or position.step == run.stop_step
            if save_due or _probe_due(run, position.step):
                _drain(run, pending, position, progress)
                pending = None
            if save_due:
                last_saved = _save(run, position)
    finally:
        progress.close()
        stop_signal.restore()
    if stopped_by == "finished" and position.step < config.train.steps:
        stopped_by = "stop_at_step"
    return _finish(run, position, stopped_by, last_saved)


# -------------------------------------------------------------------- set-up
def _set_up(config: PretrainConfig, resume: str | None, info: D.DistInfo) -> tuple[_Run, TrainPosition]:
    """Data, model, trainer and run outputs, restored from the checkpoint `resume` names (in
    the order the RNG streams expect: a resumed run continues bit-identically)."""
    out = Path(config.output_dir)
    device = info.device
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        # the cores are shared with DataLoader workers and other ranks; oversubscribed BLAS
        # threads make small models several times slower
        cores = (os.cpu_count() or 1) // max(1, info.world_size)
        torch.set_num_threads(max(1, cores - config.data.num_workers))
    checkpoints = CheckpointManager(out / "checkpoints", config.checkpoint.keep_last)
    state, state_path = _load_resume_state(resume, checkpoints, config, info)
    if state is not None:
        _check_target_steps(state["step"], config, state_path)

    # ---------------------------------------------------------------- data
    seed_everything(config.train.seed + info.rank)  # per-rank augmentation streams
    scan, dataset, probe_frames = open_frames(config, info)
    sampler = ResumableBatchSampler(len(dataset), config.data.batch_size, config.train.seed, info.rank, info.world_size)
    fingerprint = frame_list_fingerprint(dataset)

    # ---------------------------------------------------------------- model and trainer
    encoder = build_encoder(config)
    model = SSLModel(_ssl_config_for_run(config, info), encoder, total_steps=config.train.steps).to(device)
    try:
        augment = MultiCropAugmentation.from_config(config.ssl, patch_size=encoder.patch_size)
    except ValueError as error:
        raise ConfigError(str(error)) from error
    if state is not None:
        _check_checkpoint_fits(state, model, config, state_path)
    forward_model = D.wrap_model(model, config.distributed.strategy, info, config.distributed.find_unused_parameters)
    precision = _resolve_precision(config.train.precision, device)
    trainer = SSLTrainer(model, precision, forward=forward_model, any_rank=lambda flag: D.any_rank(flag, info),
                         max_nonfinite_steps=config.train.max_nonfinite_steps, compile=config.train.compile_options())
    run = _Run(
        config=config, info=info, out=out, resumed=state is not None, scan=scan, dataset=dataset, sampler=sampler,
        fingerprint=fingerprint, probe_frames=probe_frames, model=model, trainer=trainer, augment=augment,
        precision=precision, teacher_prefix=_module_prefix(model, model.teacher_backbone), checkpoints=checkpoints,
        guard=NonFiniteGuard(config.train.max_nonfinite_steps),
        monitor=CollapseMonitor(config.log.collapse, num_prototypes=config.ssl.heads.num_prototypes),
        probe_monitor=ProbeMonitor(config.log.probe_metric, max_drop=config.log.probe_max_drop, patience=config.log.probe_patience),
        skips=SkipCounts(), stop_step=config.train.stop_at_step or config.train.steps,
        min_frames=2 if config.ssl.loss.koleo_weight > 0 else 1,
        empty_limit=min(config.train.max_empty_batches, sampler.batches_per_epoch),
    )
    position = TrainPosition() if state is None else _resume(run, state, state_path)
    _open_outputs(run, position, state_path)
    return run, position


def _resume(run: _Run, state: dict, path: Path | None) -> TrainPosition:
    """Weights, optimiser, scaler, guard, skip totals and RNG streams from the checkpoint; its position."""
    config, info, trainer = run.config, run.info, run.trainer
    _load_weights_and_optimizer(run.model, trainer.optimizer, state, config, info, path)
    if state["scaler"] and trainer.scaler.is_enabled():
        trainer.scaler.load_state_dict(state["scaler"])
    epoch, batch_in_epoch = _resume_position(state, run.sampler, run.fingerprint, config, info)
    run.guard.streak = state["nonfinite_streak"]
    trainer.set_nonfinite_streak(run.guard.streak)
    run.skips.samples_before = int(state.get("skipped_samples_total", 0))
    run.skips.batches_before = int(state.get("skipped_batches_total", 0))
    rng = state["rng"]
    if len(rng) == info.world_size:
        restore_rng_state(rng[info.rank])
    elif info.is_main:
        log.warning("checkpoint came from %d processes, this run has %d: RNG streams restart", len(rng), info.world_size)
    if state.get("probe_monitor"):
        run.probe_monitor.load_state_dict(state["probe_monitor"])
    return TrainPosition(step=state["step"], epoch=epoch, batch_in_epoch=batch_in_epoch)


def _open_outputs(run: _Run, position: TrainPosition, state_path: Path | None) -> None:
    """config.yaml, the metrics and skip logs (continued on a resume) and the start-up report: rank 0."""
    config, info, out = run.config, run.info, run.out
    if not info.is_main:
        return
    resume_step = position.step if run.resumed else None
    out.mkdir(parents=True, exist_ok=True)
    dump_config(config, out / "config.yaml")
    run.logger = MetricsLogger(out, tensorboard=config.log.tensorboard, resume_step=resume_step)
    run.skip_log = SkipLog(out / "skipped_samples.txt", resume_step=resume_step)
    run.skip_log.start_session(position.step, state_path, run.scan.unreadable)
    log.info("%s\n%s", out, run.scan.report(config.data.stride))
    log.info(
        "%s: %d frames from %d readable sources, %d process(es) × batch %d, %s, %s, steps %d → %d",
        out, len(run.dataset), len(run.dataset.sources), info.world_size, config.data.batch_size, info.device, run.precision,
        position.step, run.stop_step,
    )
    if run.probe_frames is not None:
        run.probe_logger = MetricsLogger(out, tensorboard=config.log.tensorboard, resume_step=resume_step, stem="probe")
        log.info("probe: %d held-out frames of %d episode(s) every %d steps (probe.jsonl)", len(run.probe_frames.pixels),
                 len(run.probe_frames.episode.unique()), config.log.probe_every_steps)


# -------------------------------------------------------------------- step bookkeeping, logs
def _take_skips(run: _Run, batch: dict[str, Any], step: int) -> None:
    """Count the batch's unreadable samples; their records wait for the next save."""
    run.dataset.merge_skipped(batch)
    records = run.dataset.drain_new_skips()
    run.skips.pending.extend((step + 1, file, reason) for file, reason in records)  # during step + 1
    skipped = int(batch["num_skipped"])
    run.skips.since_log += skipped
    run.skips.samples += skipped


@dataclass
class _QueuedStep:
    """A step queued on the device, its values on their way to the host (`StepResult.to_host`)."""

    values: HostCopy
    start: TrainPosition  # before the step (its batch not yet fetched)
    end: TrainPosition  # after it
    batch: dict[str, Any]  # its unreadable samples are counted when the step is read (an undone step never counts them)
    num_frames: int
    t0: float  # when its batch was fetched


def _settle(run: _Run, queued: _QueuedStep, progress: tqdm) -> None:
    """Wait for the step's values (not for the work queued after it), then the NaN guard, skips and logs."""
    values = queued.values.wait()
    step = queued.start.step
    run.guard.record(values.finite, step)
    if not values.finite and run.info.is_main:
        log.warning("step %d: non-finite loss/gradients (loss=%s, grad_norm=%s); step skipped", step, values.loss,
                    values.grad_norm)
    _take_skips(run, queued.batch, step)
    # wall time per step: since this step's batch was fetched or the previous step was read, whichever is later
    now = time.perf_counter()
    elapsed, run.last_read_at = now - max(queued.t0, run.last_read_at), now
    _log_step(run, queued.end, values, queued.num_frames, elapsed, progress)


def _drain(run: _Run, pending: _QueuedStep | None, position: TrainPosition, progress: tqdm) -> None:
    """Read the step in flight (if any); stop if it completed a streak of non-finite steps."""
    if pending is not None:
        _settle(run, pending, progress)
    if run.guard.should_stop:
        _stop_on_nonfinite(run, position)


def _stop_on_nonfinite(run: _Run, position: TrainPosition) -> None:
    last_saved = _save(run, position)
    D.barrier(run.info)
    raise NonFiniteLossError(
        f"{run.guard.streak} consecutive non-finite steps (from step {run.guard.first_bad_step} to "
        f"{position.step - 1}); stopping. The weights and optimiser are the last good ones (no update was "
        f"applied since), saved to {last_saved or run.checkpoints.path_for(position.step)}. Lower "
        f"ssl.optim.base_lr, check the frames, or use train.precision=fp32, then continue with --resume."
    )


def _probe_due(run: _Run, step: int) -> bool:
    every = run.config.log.probe_every_steps
    return run.probe_frames is not None and (step % every == 0 or step == run.stop_step)


def _log_step(run: _Run, position: TrainPosition, values: StepValues, num_frames: int, elapsed: float, progress: tqdm) -> None:
    """The metrics row (rank 0, every log.every_steps), the collapse monitor and the probe."""
    config, info, step, skips = run.config, run.info, position.step, run.skips
    log_step = step % config.log.every_steps == 0 or step == run.stop_step  # the same on every rank
    log_due = run.logger is not None and log_step
    monitor_due = info.is_main and step % config.log.monitor_every_steps == 0 and step > config.log.collapse.after_step
    skip_counts = D.sum_ints((skips.since_log, skips.samples, skips.batches), info) if log_step else None
    if log_step:
        skips.since_log = 0
    metrics = values.metrics
    if log_due:
        row = {"loss": values.loss, **metrics, **{k: float(v) for k, v in values.schedule.items()}}
        row.update(grad_norm=values.grad_norm, skipped_step=int(not values.finite), epoch=position.epoch,
                   step_time_s=elapsed, frames_per_s=num_frames * info.world_size / elapsed,
                   # unreadable samples since the previous row, and over the whole run
                   skipped_samples=skip_counts[0], skipped_samples_total=skips.samples_before + skip_counts[1],
                   skipped_batches_total=skips.batches_before + skip_counts[2])
        run.logger.log(step, row)
        progress.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row.get('lr', float('nan')):.2e}")
    if monitor_due:
        for problem in run.monitor.check(metrics):
            message = f"step {step}: possible collapse: {problem}"
            log.warning(message)
            tqdm.write("WARNING " + message)
    if _probe_due(run, step):
        _run_probe(run, step)


def _run_probe(run: _Run, at_step: int) -> None:
    """Every rank runs the teacher (FSDP shards it); rank 0 logs and warns."""
    config = run.config
    values = probe_teacher(run.model.teacher_backbone, run.probe_frames, config.ssl.crops.global_size, config.log.probe_window,
                           config.train.seed)
    if run.probe_logger is None:
        return
    if at_step == 0:
        values["probe/pixels_retrieval_changed"] = pixel_retrieval(run.probe_frames, config.log.probe_window, config.train.seed)
    run.probe_logger.log(at_step, values)
    for problem in run.probe_monitor.check(at_step, values):
        message = f"step {at_step}: probe: {problem}"
        log.warning(message)
        tqdm.write("WARNING " + message)


# -------------------------------------------------------------------- checkpoint
def _save(run: _Run, position: TrainPosition) -> Path | None:
    """Collective (skip records and totals are gathered; FSDP state too); rank 0 writes."""
    config, info, model, trainer, skips, sampler = run.config, run.info, run.model, run.trainer, run.skips, run.sampler
    full = D.model_state_dict(model, config.distributed.strategy, info)
    optim = D.optimizer_state_dict(model, trainer.optimizer, config.distributed.strategy, info)
    rng = D.all_gather_objects(capture_rng_state(), info)
    records = D.all_gather_objects(list(skips.pending), info)
    skips.pending.clear()
    skipped, empty = D.sum_ints((skips.samples, skips.batches), info)
    if not info.is_main:
        return None
    payload = {
        "format": CHECKPOINT_FORMAT,
        "step": position.step,
        "epoch": position.epoch,
        "batch_index": position.batch_in_epoch,
        "world_size": info.world_size,
        # the position in a form that survives a change of batch size or of processes
        "data_position": {
            "epoch": position.epoch,
            "samples_done": sampler.samples_done(position.batch_in_epoch),
            "num_samples": len(run.dataset),
            "fingerprint": run.fingerprint,
            "seed": config.train.seed,
            "global_batch": sampler.global_batch,
        },
        "skipped_samples_total": skips.samples_before + skipped,
        "skipped_batches_total": skips.batches_before + empty,
        "model": full,
        "optimizer": optim,
        "scaler": trainer.scaler.state_dict() if trainer.scaler.is_enabled() else {},
        "rng": rng,
        "nonfinite_streak": run.guard.streak,
        "probe_monitor": run.probe_monitor.state_dict(),
        "teacher_prefix": run.teacher_prefix,
        "encoder_config": model.teacher_backbone.config.to_json_string(),
        "config": config.to_dict(),
    }
    # records and their marker before the payload: if the payload never lands, a resume from the
    # previous checkpoint drops them (everything after its marker) and re-meets those skips
    run.skip_log.append(sorted((r for rank in records for r in rank), key=lambda r: r[0]), position.step)
    return run.checkpoints.save(payload, position.step)


# -------------------------------------------------------------------- end of run
def _finish(run: _Run, position: TrainPosition, stopped_by: str, last_saved: Path | None) -> RunResult:
    """Skip summary, closed logs and loss curve (rank 0), the exported teacher of a run that reached its stop."""
    config, info, step = run.config, run.info, position.step
    skipped_run, _ = D.sum_ints((run.skips.samples, run.skips.batches), info)
    summaries = D.all_gather_objects(run.dataset.skipped_summary(), info)
    result = RunResult(output_dir=run.out, step=step, stopped_by=stopped_by, checkpoint=last_saved, skipped_samples=skipped_run,
                       skipped_samples_total=run.skips.samples_before + skipped_run)
    if info.is_main:
        run.logger.close()
        if run.probe_logger is not None:
            run.probe_logger.close()
        plot_loss_curve(run.logger.jsonl_path, run.out / "loss_curve.png")
        summary = "\n".join(f"[rank {r}] {text}" if info.distributed else text for r, text in enumerate(summaries))
        run.skip_log.end_session(step, summary)
        log.info("%d unreadable sample(s) skipped in this session, %d over the run (listed in %s).\n%s",
                 skipped_run, result.skipped_samples_total, run.skip_log.path, summary)
    if config.export.at_end and stopped_by in ("finished", "stop_at_step"):
        result.exported = _export_teacher(run)
    if info.is_main and stopped_by not in ("finished",):
        log.info("stopped (%s) at step %d of %d; continue with --resume", stopped_by, step, config.train.steps)
    D.barrier(info)
    return result


def _export_teacher(run: _Run) -> dict[str, Path]:
    """The teacher backbone to `<output_dir>/export` (rank 0); FSDP2 first gathers the full
    weights into a fresh CPU encoder (collective)."""
    config, info, model = run.config, run.info, run.model
    teacher: DinoEncoder = model.teacher_backbone
    if config.distributed.strategy == "fsdp":
        full = D.model_state_dict(model, config.distributed.strategy, info)  # every rank gathers; rank 0 keeps it
        if not info.is_main:
            return {}
        teacher = teacher_from_state(full, run.teacher_prefix, model.teacher_backbone.config)
    return export_encoder(teacher, run.out / "export", config.export.formats) if info.is_main else {}


# -------------------------------------------------------------------- data
def open_frames(config: PretrainConfig, info: D.DistInfo) -> tuple[ScanResult, FrameDataset, ProbeFrames | None]:
    """Discovery, the start-up scan, the training dataset and (with `log.probe_every_steps`) the
    probe's held-out frames, whose episodes are left out of training; DataError (with the
    numbers) when the frames cannot fill one global batch, before any model is built."""
    data = config.data
    if data.decode_device == "cuda" and info.device.type != "cuda":
        raise ConfigError(f"data.decode_device=cuda decodes JPEGs with nvJPEG on the training GPU, but this run trains "
                          f"on {info.device}; use data.decode_device=cpu or a CUDA --device")
    try:
        sources = discover_sources(data.frames, cameras=data.cameras)
    except (NoFramesError, FileNotFoundError) as error:
        raise DataError(str(error)) from error
    scan = scan_sources(sources, data.frames, frame_size=data.frame_size, min_frame_side=data.min_frame_side,
                        check_files=data.check_files)
    if not scan.sources:
        first = "; ".join(f"{file}: {reason}" for file, reason in scan.unreadable[:3])
        raise DataError(
            f"no readable frames in --frames {', '.join(data.frames)}: {len(scan.unreadable)} file(s)/source(s) found, "
            f"none readable (first: {first})"
        )
    train_sources, probe_frames = scan.sources, None
    if config.log.probe_every_steps > 0:
        try:
            train_sources, held_out = hold_out_sources(scan.sources, config.log.probe_holdout_fraction, config.train.seed)
        except ValueError as error:
            raise ConfigError(str(error)) from error
        held = FrameDataset(held_out, frame_size=data.frame_size, min_frame_side=data.min_frame_side)
        probe_frames = load_probe_frames(held, config.log.probe_max_frames)
    cache = _build_frame_cache(config, train_sources, info) if data.frame_cache else None
    try:
        dataset = FrameDataset(
            train_sources + scan.unreadable_sources,
            frame_size=data.frame_size,
            stride=data.stride,
            neighbor_offset=data.neighbor_offset,
            seed=config.train.seed,
            min_frame_side=data.min_frame_side,
            defer_jpeg=data.decode_device == "cuda",
            frame_cache=cache,
        )
    except NoFramesError as error:
        raise DataError(str(error)) from error
    needed = data.batch_size * info.world_size
    if len(dataset) < needed:
        stride = f" after stride {data.stride}" if data.stride > 1 else ""
        fits = len(dataset) // info.world_size
        advice = f"lower --batch-size to at most {fits}" if fits >= 2 or config.ssl.loss.koleo_weight == 0 else "add frames"
        raise DataError(
            f"not enough frames for one step: {len(dataset)} readable frame(s){stride} in {len(dataset.sources)} source(s) "
            f"({len(scan.unreadable)} unreadable file(s) left out), but one step takes data.batch_size "
            f"{data.batch_size} × {info.world_size} process(es) = {needed}; {advice}"
        )
    return scan, dataset, probe_frames


def _build_frame_cache(config: PretrainConfig, sources: list[FrameSource], info: D.DistInfo) -> FrameCache:
    """`data.frame_cache`: the ranks decode the missing sources between them, then check that all are there."""
    data = config.data
    cache = FrameCache(data.frame_cache, data.frame_size, data.min_frame_side)
    try:
        report = cache.build(sources, workers=data.num_workers, progress=info.is_main and config.log.progress_bar,
                             shard=(info.rank, info.world_size))
    except OSError as error:
        raise DataError(f"data.frame_cache {data.frame_cache}: cannot write the decoded frames there ({error})") from error
    D.barrier(info, host=True)
    missing = cache.missing(sources)
    if missing:
        raise DataError(f"data.frame_cache {data.frame_cache}: {len(missing)} source(s) not cached after the build, "
                        f"e.g. {missing[0].name}; another rank failed to decode them (see its log)")
    if info.is_main:
        log.info("%s", report.summary(cache.folder))
    return cache


def frame_list_fingerprint(dataset: FrameDataset) -> str:
    """What the dataset's index space means: sources in order, their frame counts and files, the
    stride. A resume compares it to continue the same permutation or restart the epoch."""
    digest = hashlib.sha256(f"stride={dataset.stride}".encode())
    for s in dataset.sources:
        digest.update(f"\n{s.kind}|{s.path.resolve()}|{s.key}|{s.offset}|{s.num_frames}".encode())
        for file in s.files:
            digest.update(f"|{file.name}".encode())
    return digest.hexdigest()[:16]


def batch_stream(
    dataset: FrameDataset, sampler: ResumableBatchSampler, start: TrainPosition, config: PretrainConfig, device: torch.device
) -> Iterator[tuple[dict[str, Any], tuple[int, int]]]:
    """Endless batches from `start` on, each with the (epoch, batch_in_epoch) of the batch after it.

    One DataLoader for the whole run: its workers start once, and an epoch boundary is a batch like any
    other (a loader per epoch restarted them, a stall of their start-up and first batch at every epoch).
    Each index carries its epoch for the temporal-neighbour draw."""
    epoch, batch_index = start.epoch, start.batch_in_epoch
    decode = JpegBatchDecoder(dataset, device) if dataset.defer_jpeg else None  # JPEG bytes from the workers
    loader = DataLoader(
        dataset,
        batch_sampler=sampler.batches(epoch, batch_index),
        collate_fn=collate_frames,
        num_workers=config.data.num_workers,
        pin_memory=device.type == "cuda",
        # An explicit generator: the loader's worker seeds then never draw from (and shift)
        # the global torch RNG, which the augmentations use.
        generator=torch.Generator().manual_seed(config.train.seed + epoch),
    )
    for batch in loader:
        epoch, batch_index = sampler.next_position(epoch, batch_index)
        yield (decode(batch) if decode else batch), (epoch, batch_index)


# -------------------------------------------------------------------- model
def build_encoder(config: PretrainConfig) -> DinoEncoder:
    """A size name builds a random-init encoder; anything else is loaded (hub id, folder, .pth)."""
    try:
        return DinoEncoder.from_source(config.model.init, **dict(config.model.encoder_overrides))
    except (OSError, ValueError, KeyError) as error:  # missing folder/file, unknown size name, hub offline
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(f"model.init {config.model.init!r} cannot be loaded: {first}") from error


# -------------------------------------------------------------------- resume
# Config fields whose change does not alter what a checkpoint means.
_IGNORED = ("train.stop_at_step", "train.device", "train.compile", "train.compile_mode", "data.num_workers",
            "data.check_files", "data.decode_device", "output_dir", "log.", "export.", "checkpoint.")
# Fields that decide the shapes and names of the saved tensors: named when a checkpoint does not fit.
_ARCHITECTURE = ("model.", "ssl.heads.", "ssl.loss.centering", "ssl.loss.gram_weight", "ssl.loss.gram_refresh_steps",
                 "ssl.continued.gram_anchor")
# What a change means for the resumed run, shown with the warning.
_HINTS = {
    "train.steps": "the lr, weight-decay, teacher-temperature and momentum schedules are laid over train.steps; "
                   "they continue on the new curve",
    "data.batch_size": "the data position is converted (see below); lr scaling follows the new global batch",
    "data.frames": "a different frame list restarts the epoch's data order",
    "data.cameras": "a different frame list restarts the epoch's data order",
    "data.stride": "a different frame list restarts the epoch's data order",
    "train.seed": "the epoch's data order is a different permutation and restarts",
}


def config_changes(saved: dict, current: dict, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted field, saved value, current value) for every field that differs, ignored ones left out."""
    changes = []
    for key in sorted(set(saved) | set(current)):
        name = prefix + key
        old, new = saved.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict) and not name.startswith("model.encoder_overrides"):
            changes += config_changes(old, new, name + ".")
        elif old != new and not any(name == i or (i.endswith(".") and name.startswith(i)) for i in _IGNORED):
            changes.append((name, old, new))
    return changes


def _load_resume_state(
    resume: str | None, checkpoints: CheckpointManager, config: PretrainConfig, info: D.DistInfo
) -> tuple[dict | None, Path | None]:
    if resume is None:
        latest = checkpoints.latest()
        if latest is not None:
            raise OutputExistsError(
                f"{config.output_dir} already holds checkpoints ({latest.name}); pass --resume to continue "
                "that run or choose another --output-dir"
            )
        return None, None
    if resume == "auto":
        found = load_latest(checkpoints, move_aside=info.is_main)
        if found is None:
            if info.is_main:
                log.info("--resume: no checkpoint in %s yet; starting a fresh run", checkpoints.directory)
            return None, None
        path, state = found
    else:
        folder = checkpoint_folder(resume)
        if folder is not None:  # a run or checkpoints folder: its newest good checkpoint
            found = load_latest(CheckpointManager(folder, keep_last=1), move_aside=info.is_main)
            assert found is not None  # checkpoint_folder found one
            path, state = found
        else:  # a file the user named: used as it is, never moved
            path = Path(resume)
            state = load_checkpoint(path)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ResumeError(f"{path}: checkpoint format {state.get('format')!r}; this version reads {CHECKPOINT_FORMAT}")
    if info.is_main:
        for name, old, new in config_changes(state["config"], config.to_dict()):
            hint = f" ({_HINTS[name]})" if name in _HINTS else ""
            log.warning("resume: %s was %r in %s, now %r%s", name, old, path.name, new, hint)
        log.info("resuming from %s (step %d)", path, state["step"])
    return state, path


def _check_target_steps(saved_step: int, config: PretrainConfig, path: Path | None) -> None:
    steps, stop = config.train.steps, config.train.stop_at_step
    if steps < saved_step:
        raise ResumeError(
            f"train.steps={steps} is below the checkpoint's step {saved_step} ({path}): there is nothing to train. "
            f"Pass --steps above {saved_step} to train longer (the schedules stretch to it), or export this checkpoint "
            f"with python -m vla_dino.pretrain.export --checkpoint {path}"
        )
    if stop is not None and stop < saved_step:
        raise ResumeError(f"train.stop_at_step={stop} is below the checkpoint's step {saved_step} ({path}); "
                          f"pass a later --stop-at-step or none")
    if saved_step == (stop or steps):
        log.info("the checkpoint %s is already at step %d: nothing left to train", path, saved_step)


def _check_checkpoint_fits(state: dict, model: torch.nn.Module, config: PretrainConfig, path: Path | None) -> None:
    """One clear refusal instead of torch's line per mismatched tensor."""
    saved, current = state["model"], model.state_dict()
    missing = [k for k in current if k not in saved]
    unexpected = [k for k in saved if k not in current]
    shapes = [(k, tuple(saved[k].shape), tuple(v.shape)) for k, v in current.items()
              if k in saved and tuple(saved[k].shape) != tuple(v.shape)]
    if not (missing or unexpected or shapes):
        return
    problems = []
    if shapes:
        name, old, new = shapes[0]
        problems.append(f"{len(shapes)} tensor(s) differ in shape, e.g. {name} {old} in the checkpoint, {new} now")
    if missing:
        problems.append(f"{len(missing)} tensor(s) this config builds are not in it, e.g. {missing[0]}")
    if unexpected:
        problems.append(f"{len(unexpected)} saved tensor(s) this config does not build, e.g. {unexpected[0]}")
    changes = config_changes(state["config"], config.to_dict())
    named = [c for c in changes if c[0].startswith(_ARCHITECTURE)] or changes
    changed = "; ".join(f"{name} was {old!r}, now {new!r}" for name, old, new in named) or "no config field (another version?)"
    raise ResumeError(
        f"cannot resume from {path}: its weights do not fit the model this config builds ({'; '.join(problems)}). "
        f"Changed since the checkpoint: {changed}. Resume with the checkpoint's values, or start a new run in "
        f"another --output-dir"
    )


def _load_weights_and_optimizer(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict, config: PretrainConfig, info: D.DistInfo,
    path: Path | None,
) -> None:
    # torch's Optimizer.load_state_dict takes the saved per-group options (lr_mult, wd_mult, betas):
    # keep this config's, so a changed layer_decay or betas really applies (the resume warned about it).
    fresh = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    saved_groups = state["optimizer"].get("param_groups") if isinstance(state["optimizer"], dict) else None
    if config.distributed.strategy != "fsdp" and saved_groups is not None:
        sizes_saved = [len(g["params"]) for g in saved_groups]
        sizes_now = [len(g["params"]) for g in optimizer.param_groups]
        if sizes_saved != sizes_now:
            raise ResumeError(
                f"cannot resume from {path}: its optimiser has {len(sizes_saved)} parameter groups of sizes "
                f"{sizes_saved[:6]}…, this config builds {len(sizes_now)} of {sizes_now[:6]}…"
            )
    try:
        D.load_model_and_optimizer(model, optimizer, state["model"], state["optimizer"], config.distributed.strategy, info)
    except (RuntimeError, ValueError, KeyError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ResumeError(f"cannot resume from {path}: {first}") from error
    for group, options in zip(optimizer.param_groups, fresh):
        group.update(options)


def _resume_position(
    state: dict, sampler: ResumableBatchSampler, fingerprint: str, config: PretrainConfig, info: D.DistInfo
) -> tuple[int, int]:
    """(epoch, batch_index) to continue from, for this run's batch size and frame list."""
    position = state.get("data_position")
    if position is None:  # checkpoints before data_position: a batch index at the saved global batch
        saved_batch = state["config"]["data"]["batch_size"] * state.get("world_size", 1)
        position = {"epoch": state["epoch"], "samples_done": state["batch_index"] * saved_batch, "num_samples": None,
                    "fingerprint": None, "seed": state["config"]["train"]["seed"], "global_batch": saved_batch}
    epoch = int(position["epoch"])
    same_order = (position["fingerprint"] in (None, fingerprint) and position["num_samples"] in (None, sampler.num_samples)
                  and position["seed"] == config.train.seed)
    if not same_order:
        if info.is_main:
            what = (f"the frame list changed ({position['num_samples']} → {sampler.num_samples} frames)"
                    if position["fingerprint"] != fingerprint else f"train.seed changed ({position['seed']} → {config.train.seed})")
            log.warning("resume: %s, so the position in epoch %d means nothing now: restarting epoch %d from its first "
                        "batch (the weights, optimiser and step %d are kept)", what, epoch, epoch, state["step"])
        return epoch, 0
    new_epoch, batch_index, repeated = sampler.position_for_samples(epoch, int(position["samples_done"]))
    if info.is_main and position["global_batch"] != sampler.global_batch:
        log.warning(
            "resume: global batch %d → %d: epoch %d continues after sample %d of %d (batch %d of %d)%s",
            position["global_batch"], sampler.global_batch, epoch, position["samples_done"], sampler.num_samples,
            batch_index, sampler.batches_per_epoch,
            f"; {repeated} frame(s) of this epoch are seen again" if repeated else
            ("; the rest of the epoch cannot fill a batch: next epoch" if new_epoch != epoch else ""),
        )
    return new_epoch, batch_index


# -------------------------------------------------------------------- helpers
def _ssl_config_for_run(config: PretrainConfig, info: D.DistInfo):
    """Pin the lr-scaling batch to the nominal global batch (per-process batch × processes), so a
    first batch thinned by unreadable frames cannot change the lr of the whole run."""
    optim = config.ssl.optim
    if optim.batch_size is not None:
        return config.ssl
    pinned = dataclasses.replace(optim, batch_size=config.data.batch_size * info.world_size)
    return dataclasses.replace(config.ssl, optim=pinned)


def _resolve_precision(precision: str, device: torch.device) -> str:
    precision = resolve_dtype(precision, device, flag="train.precision")
    if precision == "fp16" and device.type != "cuda":  # a training rule: fp16's grad scaler is for CUDA
        raise ConfigError("train.precision=fp16 needs a CUDA device (use bf16 or fp32 on CPU)")
    return precision


def _module_prefix(root: torch.nn.Module, target: torch.nn.Module) -> str:
    for name, module in root.named_modules():
        if module is target:
            return name + "." if name else ""
    raise ValueError("teacher backbone is not a submodule of the SSL model")


class _StopSignal:
    """SIGTERM / SIGINT set a flag; the loop checkpoints and leaves at the end of the step (or of
    the skipped batch). A second signal gets the previous handler (a second Ctrl-C interrupts at once)."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, Any] = {}
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signal.Signals(signum).name
        signal.signal(signum, self._previous[signum])
        log.warning("%s received: saving a checkpoint at the end of this step", self.received)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
