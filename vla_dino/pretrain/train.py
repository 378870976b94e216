"""The pretraining loop, readable top to bottom.

    frames (start-up scan, DataLoader, sharded resumable sampler) → multi-crop on the training
    device → SSLModel forward under autocast → NaN guard → backward → clip → AdamW step → EMA
    teacher → logs / collapse monitor / checkpoints

`train(config, resume)` is the whole run; `python -m vla_dino.pretrain` parses the command
line into a `PretrainConfig` and calls it (also under torchrun, one call per process).

The run stops only for a reason it states (vla_dino/pretrain/errors.py) and never loses more than
one checkpoint interval: every path through the loop, including batches skipped because no frame
could be read, checks the stop signals, and every stop saves a checkpoint first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import signal
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from vla_dino.data import FrameDataset, NoFramesError, ScanResult, collate_frames, discover_sources, scan_sources
from vla_dino.encoder import DinoEncoder
from vla_dino.export import export_encoder
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
from vla_dino.pretrain.logger import MetricsLogger, plot_loss_curve
from vla_dino.pretrain.monitor import CollapseMonitor, NonFiniteGuard
from vla_dino.pretrain.probe import ProbeFrames, ProbeMonitor, hold_out_sources, load_probe_frames, pixel_retrieval, probe_teacher
from vla_dino.pretrain.sampler import ResumableBatchSampler
from vla_dino.pretrain.skips import SkipLog
from vla_dino.ssl import MultiCropAugmentation, SSLModel

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


def _train(config: PretrainConfig, resume: str | None, info: D.DistInfo) -> RunResult:
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
    # KoLeo needs a nearest neighbour in the batch: a batch thinned to one frame is unusable.
    min_frames = 2 if config.ssl.loss.koleo_weight > 0 else 1
    empty_limit = min(config.train.max_empty_batches, sampler.batches_per_epoch)

    # ---------------------------------------------------------------- model and optimiser
    encoder = build_encoder(config)
    model = SSLModel(_ssl_config_for_run(config, info), encoder, total_steps=config.train.steps).to(device)
    try:
        augment = MultiCropAugmentation.from_config(config.ssl, patch_size=encoder.patch_size)
    except ValueError as error:
        raise ConfigError(str(error)) from error
    if state is not None:
        _check_checkpoint_fits(state, model, config, state_path)
    forward_model = D.wrap_model(model, config.distributed.strategy, info, config.distributed.find_unused_parameters)
    optimizer = torch.optim.AdamW(model.param_groups(), **_adamw_kwargs(config))
    precision = _resolve_precision(config.train.precision, device)
    autocast = _autocast(precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    teacher_prefix = _module_prefix(model, model.teacher_backbone)

    # ---------------------------------------------------------------- resume
    step, epoch, batch_index = 0, 0, 0
    skipped_base, empty_base = 0, 0  # totals of the run before this process (from the checkpoint)
    guard = NonFiniteGuard(config.train.max_nonfinite_steps)
    if state is not None:
        _load_weights_and_optimizer(model, optimizer, state, config, info, state_path)
        if state["scaler"] and scaler.is_enabled():
            scaler.load_state_dict(state["scaler"])
        step = state["step"]
        epoch, batch_index = _resume_position(state, sampler, fingerprint, config, info)
        guard.streak = state["nonfinite_streak"]
        skipped_base, empty_base = int(state.get("skipped_samples_total", 0)), int(state.get("skipped_batches_total", 0))
        rng = state["rng"]
        if len(rng) == info.world_size:
            restore_rng_state(rng[info.rank])
        elif info.is_main:
            log.warning("checkpoint came from %d processes, this run has %d: RNG streams restart", len(rng), info.world_size)
    stop_step = config.train.stop_at_step or config.train.steps

    # ---------------------------------------------------------------- run outputs (rank 0)
    logger, skip_log = None, None
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        dump_config(config, out / "config.yaml")
        logger = MetricsLogger(out, tensorboard=config.log.tensorboard, resume_step=step if state is not None else None)
        skip_log = SkipLog(out / "skipped_samples.txt", resume_step=step if state is not None else None)
        skip_log.start_session(step, state_path, scan.unreadable)
        log.info("%s\n%s", out, scan.report(config.data.stride))
        log.info(
            "%s: %d frames from %d readable sources, %d process(es) × batch %d, %s, %s, steps %d → %d",
            out, len(dataset), len(dataset.sources), info.world_size, config.data.batch_size, device, precision, step, stop_step,
        )
    monitor = CollapseMonitor(config.log.collapse, num_prototypes=config.ssl.heads.num_prototypes)
    probe_monitor = ProbeMonitor(config.log.probe_metric, max_drop=config.log.probe_max_drop, patience=config.log.probe_patience)
    if state is not None and state.get("probe_monitor"):
        probe_monitor.load_state_dict(state["probe_monitor"])
    probe_logger = None
    if info.is_main and probe_frames is not None:
        probe_logger = MetricsLogger(out, tensorboard=config.log.tensorboard, resume_step=step if state is not None else None, stem="probe")
        log.info("probe: %d held-out frames of %d episode(s) every %d steps (probe.jsonl)", len(probe_frames.pixels),
                 len(probe_frames.episode.unique()), config.log.probe_every_steps)

    def run_probe(at_step: int) -> None:
        """Every rank runs the teacher (FSDP shards it); rank 0 logs and warns."""
        values = probe_teacher(model.teacher_backbone, probe_frames, config.ssl.crops.global_size, config.log.probe_window,
                               config.train.seed)
        if probe_logger is None:
            return
        if at_step == 0:
            values["probe/pixels_retrieval_changed"] = pixel_retrieval(probe_frames, config.log.probe_window, config.train.seed)
        probe_logger.log(at_step, values)
        for problem in probe_monitor.check(at_step, values):
            message = f"step {at_step}: probe: {problem}"
            log.warning(message)
            tqdm.write("WARNING " + message)
    stop_signal = _StopSignal()
    # Skip counters of this process: since the last logged row, and since the process started.
    skipped_since_log, skipped_here, empty_here = 0, 0, 0
    pending_skips: list[tuple[int, str, str]] = []  # (step, file, reason), written at the next save

    def save() -> Path | None:
        """Collective (skip records and totals are gathered; FSDP state too); rank 0 writes."""
        full = D.model_state_dict(model, config.distributed.strategy, info)
        optim = D.optimizer_state_dict(model, optimizer, config.distributed.strategy, info)
        rng = D.all_gather_objects(capture_rng_state(), info)
        records = D.all_gather_objects(list(pending_skips), info)
        pending_skips.clear()
        skipped, empty = D.sum_ints((skipped_here, empty_here), info)
        if not info.is_main:
            return None
        payload = {
            "format": CHECKPOINT_FORMAT,
            "step": step,
            "epoch": epoch,
            "batch_index": batch_index,
            "world_size": info.world_size,
            # the position in a form that survives a change of batch size or of processes
            "data_position": {
                "epoch": epoch,
                "samples_done": sampler.samples_done(batch_index),
                "num_samples": len(dataset),
                "fingerprint": fingerprint,
                "seed": config.train.seed,
                "global_batch": sampler.global_batch,
            },
            "skipped_samples_total": skipped_base + skipped,
            "skipped_batches_total": empty_base + empty,
            "model": full,
            "optimizer": optim,
            "scaler": scaler.state_dict() if scaler.is_enabled() else {},
            "rng": rng,
            "nonfinite_streak": guard.streak,
            "probe_monitor": probe_monitor.state_dict(),
            "teacher_prefix": teacher_prefix,
            "encoder_config": model.teacher_backbone.config.to_json_string(),
            "config": config.to_dict(),
        }
        # records and their marker before the payload: if the payload never lands, a resume from the
        # previous checkpoint drops them (everything after its marker) and re-meets those skips
        skip_log.append(sorted((r for rank in records for r in rank), key=lambda r: r[0]), step)
        return checkpoints.save(payload, step)

    def take_skips(batch: dict[str, Any]) -> int:
        dataset.merge_skipped(batch)
        records = dataset.drain_new_skips()
        pending_skips.extend((step + 1, file, reason) for file, reason in records)  # during step + 1
        return int(batch["num_skipped"])

    # ---------------------------------------------------------------- the loop
    batches = _batch_stream(dataset, sampler, epoch, batch_index, config, device)
    progress = tqdm(total=stop_step, initial=step, disable=not (info.is_main and config.log.progress_bar), unit="step")
    stopped_by, last_saved = "finished", None
    empty_streak = 0
    model.train()
    if probe_frames is not None and state is None:
        run_probe(0)  # the starting point (random init or the checkpoint) for the probe curve
    try:
        while step < stop_step:
            t0 = time.perf_counter()
            epoch, batch_index, batch = next(batches)
            skipped = take_skips(batch)
            skipped_since_log += skipped
            skipped_here += skipped
            # every rank skips together (a rank without frames cannot join the collectives)
            unusable = D.broadcast_flag(batch["frame"].shape[0] < min_frames, info)
            if unusable:  # too few readable frames in this batch: take the next one, bounded
                batch_index += 1
                if batch_index == sampler.batches_per_epoch:
                    epoch, batch_index = epoch + 1, 0
                empty_streak += 1
                empty_here += 1
                if empty_streak >= empty_limit:
                    last_saved = save()
                    D.barrier(info)
                    raise DataError(
                        f"{empty_streak} batches in a row had fewer than {min_frames} readable frame(s) "
                        f"({'a whole epoch' if empty_streak >= sampler.batches_per_epoch else 'train.max_empty_batches'}); "
                        f"stopping at step {step}. Saved {last_saved or checkpoints.path_for(step)}; the unreadable "
                        f"files are listed in {out / 'skipped_samples.txt'}. Fix or remove them, then continue with --resume"
                    )
                if D.broadcast_flag(stop_signal.received is not None, info):
                    last_saved = save()
                    stopped_by = stop_signal.received or "signal"
                    break
                continue
            empty_streak = 0
            frames = batch["frame"].to(device, non_blocking=True)
            neighbors = batch["neighbor"].to(device, non_blocking=True) if config.data.neighbor_offset > 0 else None
            crops = augment(frames, neighbors)

            schedule = model.apply_schedules(optimizer, step)
            with autocast:
                output = forward_model(crops, step)
            finite = not D.broadcast_flag(not bool(torch.isfinite(output.loss.detach())), info)  # every rank skips together

            grad_norm = float("nan")
            if finite:
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(output.loss).backward()
                scaler.unscale_(optimizer)
                grad_norm = float(model.clip_gradients())
                # fp16: inf gradients are the scaler's business (it skips and lowers the scale)
                finite = math.isfinite(grad_norm) or scaler.is_enabled()
                if finite:
                    scaler.step(optimizer)
                    scaler.update()
                    model.update_teacher(step)
                optimizer.zero_grad(set_to_none=True)
            guard.record(finite, step)
            if not finite and info.is_main:
                log.warning("step %d: non-finite loss/gradients (loss=%s, grad_norm=%s); step skipped", step, float(output.loss.detach()), grad_norm)

            step += 1
            batch_index += 1
            if batch_index == sampler.batches_per_epoch:
                epoch, batch_index = epoch + 1, 0
            progress.update(1)

            # ------------------------------------------------------------ logs and monitors
            log_step = step % config.log.every_steps == 0 or step == stop_step  # the same on every rank
            log_due = logger is not None and log_step
            monitor_due = info.is_main and step % config.log.monitor_every_steps == 0 and step > config.log.collapse.after_step
            skip_counts = D.sum_ints((skipped_since_log, skipped_here, empty_here), info) if log_step else None
            if log_step:
                skipped_since_log = 0
            # host copies of the metrics only on steps that use them (each is a device sync on GPU)
            metrics = {k: float(v) for k, v in output.metrics.items()} if log_due or monitor_due else {}
            if log_due:
                elapsed = time.perf_counter() - t0
                row = {"loss": float(output.loss.detach()), **metrics, **{k: float(v) for k, v in schedule.items()}}
                row.update(grad_norm=grad_norm, skipped_step=int(not finite), epoch=epoch, step_time_s=elapsed,
                           frames_per_s=frames.shape[0] * info.world_size / elapsed,
                           # unreadable samples since the previous row, and over the whole run
                           skipped_samples=skip_counts[0], skipped_samples_total=skipped_base + skip_counts[1],
                           skipped_batches_total=empty_base + skip_counts[2])
                logger.log(step, row)
                progress.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row.get('lr', float('nan')):.2e}")
            if monitor_due:
                for problem in monitor.check(metrics):
                    message = f"step {step}: possible collapse: {problem}"
                    log.warning(message)
                    tqdm.write("WARNING " + message)
            if probe_frames is not None and (step % config.log.probe_every_steps == 0 or step == stop_step):
                run_probe(step)

            # ------------------------------------------------------------ checkpoints and stops
            if guard.should_stop:
                last_saved = save()
                D.barrier(info)
                raise NonFiniteLossError(
                    f"{guard.streak} consecutive non-finite steps (from step {guard.first_bad_step} to {step - 1}); "
                    f"stopping. The weights and optimiser are the last good ones (no update was applied since), "
                    f"saved to {last_saved or checkpoints.path_for(step)}. Lower ssl.optim.base_lr, check the frames, "
                    f"or use train.precision=fp32, then continue with --resume."
                )
            signalled = D.broadcast_flag(stop_signal.received is not None, info)
            if step % config.checkpoint.every_steps == 0 or signalled or step == stop_step:
                last_saved = save()
            if signalled:
                stopped_by = stop_signal.received or "signal"
                break
    finally:
        progress.close()
        stop_signal.restore()
    if stopped_by == "finished" and step < config.train.steps:
        stopped_by = "stop_at_step"

    # ---------------------------------------------------------------- end of run
    skipped_run, _ = D.sum_ints((skipped_here, empty_here), info)
    summaries = D.all_gather_objects(dataset.skipped_summary(), info)
    result = RunResult(output_dir=out, step=step, stopped_by=stopped_by, checkpoint=last_saved, skipped_samples=skipped_run,
                       skipped_samples_total=skipped_base + skipped_run)
    if info.is_main:
        logger.close()
        if probe_logger is not None:
            probe_logger.close()
        plot_loss_curve(logger.jsonl_path, out / "loss_curve.png")
        summary = "\n".join(f"[rank {r}] {text}" if info.distributed else text for r, text in enumerate(summaries))
        skip_log.end_session(step, summary)
        log.info("%d unreadable sample(s) skipped in this session, %d over the run (listed in %s).\n%s",
                 skipped_run, result.skipped_samples_total, skip_log.path, summary)
        if config.export.at_end and stopped_by in ("finished", "stop_at_step"):
            teacher = _unsharded_teacher(model, config, info) if config.distributed.strategy == "fsdp" else model.teacher_backbone
            result.exported = export_encoder(teacher, out / "export", config.export.formats)
        if stopped_by not in ("finished",):
            log.info("stopped (%s) at step %d of %d; continue with --resume", stopped_by, step, config.train.steps)
    elif config.export.at_end and stopped_by in ("finished", "stop_at_step") and config.distributed.strategy == "fsdp":
        D.model_state_dict(model, config.distributed.strategy, info)  # the gather is collective; rank 0 keeps it
    D.barrier(info)
    return result


# -------------------------------------------------------------------- data
def open_frames(config: PretrainConfig, info: D.DistInfo) -> tuple[ScanResult, FrameDataset, ProbeFrames | None]:
    """Discovery, the start-up scan, the training dataset and (with `log.probe_every_steps`) the
    probe's held-out frames, whose episodes are left out of training; DataError (with the
    numbers) when the frames cannot fill one global batch, before any model is built."""
    data = config.data
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
    try:
        dataset = FrameDataset(
            train_sources + scan.unreadable_sources,
            frame_size=data.frame_size,
            stride=data.stride,
            neighbor_offset=data.neighbor_offset,
            seed=config.train.seed,
            min_frame_side=data.min_frame_side,
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


def frame_list_fingerprint(dataset: FrameDataset) -> str:
    """What the dataset's index space means: sources in order, their frame counts and files, the
    stride. A resume compares it to continue the same permutation or restart the epoch."""
    digest = hashlib.sha256(f"stride={dataset.stride}".encode())
    for s in dataset.sources:
        digest.update(f"\n{s.kind}|{s.path.resolve()}|{s.key}|{s.offset}|{s.num_frames}".encode())
        for file in s.files:
            digest.update(f"|{file.name}".encode())
    return digest.hexdigest()[:16]


def _batch_stream(
    dataset: FrameDataset, sampler: ResumableBatchSampler, epoch: int, batch_index: int, config: PretrainConfig, device: torch.device
) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """Endless (epoch, batch_index, batch) from the given position on."""
    while True:
        sampler.set_position(epoch, batch_index)
        dataset.set_epoch(epoch)  # temporal-neighbour draws change per epoch (before workers copy it)
        loader = DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=collate_frames,
            num_workers=config.data.num_workers,
            pin_memory=device.type == "cuda",
            # An explicit generator: the loader's worker seeds then never draw from (and shift)
            # the global torch RNG, which the augmentations use.
            generator=torch.Generator().manual_seed(config.train.seed + epoch),
            persistent_workers=False,
        )
        for batch in loader:
            yield epoch, batch_index, batch
            batch_index += 1
        epoch, batch_index = epoch + 1, 0


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
_IGNORED = ("train.stop_at_step", "train.device", "data.num_workers", "data.check_files", "output_dir",
            "log.", "export.", "checkpoint.")
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
            f"with python -m vla_dino.export --checkpoint {path}"
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


def _adamw_kwargs(config: PretrainConfig) -> dict[str, Any]:
    # lr and weight decay are placeholders: apply_schedules sets both on every group each step.
    return {"lr": 0.0, "weight_decay": 0.0, "betas": tuple(config.ssl.optim.betas)}


def _resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision=fp16 needs a CUDA device (use bf16 or fp32 on CPU)")
    return precision


def _autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def _module_prefix(root: torch.nn.Module, target: torch.nn.Module) -> str:
    for name, module in root.named_modules():
        if module is target:
            return name + "." if name else ""
    raise ValueError("teacher backbone is not a submodule of the SSL model")


def _unsharded_teacher(model: torch.nn.Module, config: PretrainConfig, info: D.DistInfo) -> DinoEncoder:
    """FSDP2: gather the full teacher weights into a fresh CPU encoder (collective)."""
    full = D.model_state_dict(model, config.distributed.strategy, info)
    prefix = _module_prefix(model, model.teacher_backbone)
    teacher = DinoEncoder(model.teacher_backbone.config)
    teacher.load_state_dict({k[len(prefix) :]: v for k, v in full.items() if k.startswith(prefix)}, strict=True)
    return teacher


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
