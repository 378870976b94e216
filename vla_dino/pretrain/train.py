"""The pretraining loop, readable top to bottom.

    frames (DataLoader, sharded resumable sampler) → multi-crop on the training device →
    SSLModel forward under autocast → NaN guard → backward → clip → AdamW step → EMA teacher
    → logs / collapse monitor / checkpoints

`train(config, resume)` is the whole run; `python -m vla_dino.pretrain` parses the command
line into a `PretrainConfig` and calls it (also under torchrun, one call per process).
"""

from __future__ import annotations

import dataclasses
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

from vla_dino.data import FrameDataset, collate_frames, discover_sources
from vla_dino.encoder import DinoEncoder
from vla_dino.export import export_encoder
from vla_dino.pretrain import distributed as D
from vla_dino.pretrain.checkpoint import (
    CheckpointManager,
    capture_rng_state,
    load_checkpoint,
    resolve_checkpoint,
    restore_rng_state,
    seed_everything,
)
from vla_dino.pretrain.config import PretrainConfig, dump_config
from vla_dino.pretrain.logger import MetricsLogger, plot_loss_curve
from vla_dino.pretrain.monitor import CollapseMonitor, NonFiniteGuard
from vla_dino.pretrain.sampler import ResumableBatchSampler
from vla_dino.ssl import MultiCropAugmentation, SSLModel

log = logging.getLogger("vla_dino.pretrain")

CHECKPOINT_FORMAT = 1


class NonFiniteLossError(RuntimeError):
    """Raised after `train.max_nonfinite_steps` consecutive NaN/inf steps (state already saved)."""


@dataclass
class RunResult:
    output_dir: Path
    step: int  # optimiser steps completed (skipped non-finite steps included)
    stopped_by: str  # "finished" | "stop_at_step" | "SIGTERM" | "SIGINT"
    checkpoint: Path | None = None
    exported: dict[str, Path] = field(default_factory=dict)
    skipped_samples: int = 0


def train(config: PretrainConfig, resume: str | None = None) -> RunResult:
    """Run (or continue) pretraining. `resume`: None (fresh run), "auto" (latest checkpoint in
    `output_dir`, fresh if there is none) or a checkpoint path."""
    config.validate()
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
    state = _load_resume_state(resume, checkpoints, config, info)

    # ---------------------------------------------------------------- data
    seed_everything(config.train.seed + info.rank)  # per-rank augmentation streams
    sources = discover_sources(config.data.frames, cameras=config.data.cameras)
    dataset = FrameDataset(
        sources,
        frame_size=config.data.frame_size,
        stride=config.data.stride,
        neighbor_offset=config.data.neighbor_offset,
        seed=config.train.seed,
    )
    sampler = ResumableBatchSampler(len(dataset), config.data.batch_size, config.train.seed, info.rank, info.world_size)

    # ---------------------------------------------------------------- model and optimiser
    encoder = build_encoder(config)
    model = SSLModel(_ssl_config_for_run(config, info), encoder, total_steps=config.train.steps).to(device)
    augment = MultiCropAugmentation.from_config(config.ssl, patch_size=encoder.patch_size)
    forward_model = D.wrap_model(model, config.distributed.strategy, info, config.distributed.find_unused_parameters)
    optimizer = torch.optim.AdamW(model.param_groups(), **_adamw_kwargs(config))
    precision = _resolve_precision(config.train.precision, device)
    autocast = _autocast(precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    teacher_prefix = _module_prefix(model, model.teacher_backbone)

    # ---------------------------------------------------------------- resume
    step, epoch, batch_index = 0, 0, 0
    guard = NonFiniteGuard(config.train.max_nonfinite_steps)
    if state is not None:
        D.load_model_and_optimizer(model, optimizer, state["model"], state["optimizer"], config.distributed.strategy, info)
        if state["scaler"]:
            scaler.load_state_dict(state["scaler"])
        step, epoch, batch_index = state["step"], state["epoch"], state["batch_index"]
        guard.streak = state["nonfinite_streak"]
        rng = state["rng"]
        if len(rng) == info.world_size:
            restore_rng_state(rng[info.rank])
        elif info.is_main:
            log.warning("checkpoint came from %d processes, this run has %d: RNG streams restart", len(rng), info.world_size)
    stop_step = config.train.stop_at_step or config.train.steps

    # ---------------------------------------------------------------- run outputs (rank 0)
    logger = None
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        dump_config(config, out / "config.yaml")
        logger = MetricsLogger(out, tensorboard=config.log.tensorboard, resume_step=step if state is not None else None)
        log.info(
            "%s: %d frames from %d sources, %d process(es) × batch %d, %s, %s, steps %d → %d",
            out, len(dataset), len(sources), info.world_size, config.data.batch_size, device, precision, step, stop_step,
        )
    monitor = CollapseMonitor(config.log.collapse, num_prototypes=config.ssl.heads.num_prototypes)
    stop_signal = _StopSignal()
    skipped_samples = 0

    def save() -> Path | None:
        """Collective under FSDP; rank 0 writes."""
        full = D.model_state_dict(model, config.distributed.strategy, info)
        optim = D.optimizer_state_dict(model, optimizer, config.distributed.strategy, info)
        rng = D.all_gather_objects(capture_rng_state(), info)
        if not info.is_main:
            return None
        payload = {
            "format": CHECKPOINT_FORMAT,
            "step": step,
            "epoch": epoch,
            "batch_index": batch_index,
            "world_size": info.world_size,
            "model": full,
            "optimizer": optim,
            "scaler": scaler.state_dict() if scaler.is_enabled() else {},
            "rng": rng,
            "nonfinite_streak": guard.streak,
            "teacher_prefix": teacher_prefix,
            "encoder_config": model.teacher_backbone.config.to_json_string(),
            "config": config.to_dict(),
        }
        return checkpoints.save(payload, step)

    # ---------------------------------------------------------------- the loop
    batches = _batch_stream(dataset, sampler, epoch, batch_index, config, device)
    progress = tqdm(total=stop_step, initial=step, disable=not (info.is_main and config.log.progress_bar), unit="step")
    stopped_by, last_saved = "finished", None
    model.train()
    try:
        while step < stop_step:
            t0 = time.perf_counter()
            epoch, batch_index, batch = next(batches)
            skipped_samples += int(batch["num_skipped"])
            dataset.merge_skipped(batch)
            if batch["frame"].shape[0] == 0:  # every frame of this batch unreadable: take the next
                batch_index += 1
                if batch_index == sampler.batches_per_epoch:
                    epoch, batch_index = epoch + 1, 0
                continue
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
            log_due = logger is not None and (step % config.log.every_steps == 0 or step == stop_step)
            monitor_due = info.is_main and step % config.log.monitor_every_steps == 0 and step > config.log.collapse.after_step
            # host copies of the metrics only on steps that use them (each is a device sync on GPU)
            metrics = {k: float(v) for k, v in output.metrics.items()} if log_due or monitor_due else {}
            if log_due:
                elapsed = time.perf_counter() - t0
                row = {"loss": float(output.loss.detach()), **metrics, **{k: float(v) for k, v in schedule.items()}}
                row.update(grad_norm=grad_norm, skipped_step=int(not finite), epoch=epoch, step_time_s=elapsed,
                           frames_per_s=frames.shape[0] * info.world_size / elapsed)
                logger.log(step, row)
                progress.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row.get('lr', float('nan')):.2e}")
            if monitor_due:
                for problem in monitor.check(metrics):
                    message = f"step {step}: possible collapse: {problem}"
                    log.warning(message)
                    tqdm.write("WARNING " + message)

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
    skipped_samples = sum(D.all_gather_objects(skipped_samples, info))
    summaries = D.all_gather_objects(dataset.skipped_summary(), info)
    result = RunResult(output_dir=out, step=step, stopped_by=stopped_by, checkpoint=last_saved, skipped_samples=skipped_samples)
    if info.is_main:
        logger.close()
        plot_loss_curve(logger.jsonl_path, out / "loss_curve.png")
        summary = "\n".join(f"[rank {r}] {text}" if info.distributed else text for r, text in enumerate(summaries))
        (out / "skipped_samples.txt").write_text(summary + "\n")
        log.info("%d unreadable sample(s) skipped during training.\n%s", skipped_samples, summary)
        if config.export.at_end and stopped_by in ("finished", "stop_at_step"):
            teacher = _unsharded_teacher(model, config, info) if config.distributed.strategy == "fsdp" else model.teacher_backbone
            result.exported = export_encoder(teacher, out / "export", config.export.formats)
        if stopped_by not in ("finished",):
            log.info("stopped (%s) at step %d of %d; continue with --resume", stopped_by, step, config.train.steps)
    elif config.export.at_end and stopped_by in ("finished", "stop_at_step") and config.distributed.strategy == "fsdp":
        D.model_state_dict(model, config.distributed.strategy, info)  # the gather is collective; rank 0 keeps it
    D.barrier(info)
    return result


# -------------------------------------------------------------------- helpers
def build_encoder(config: PretrainConfig) -> DinoEncoder:
    """A size name builds a random-init encoder; anything else is loaded (hub id, folder, .pth)."""
    return DinoEncoder.from_source(config.model.init, **dict(config.model.encoder_overrides))


def _load_resume_state(resume: str | None, checkpoints: CheckpointManager, config: PretrainConfig, info: D.DistInfo) -> dict | None:
    latest = checkpoints.latest()
    if resume is None:
        if latest is not None:
            raise FileExistsError(
                f"{config.output_dir} already holds checkpoints ({latest.name}); pass --resume to continue "
                "that run or choose another --output-dir"
            )
        return None
    if resume == "auto":
        if latest is None:
            if info.is_main:
                log.info("--resume: no checkpoint in %s yet; starting a fresh run", checkpoints.directory)
            return None
        path = latest
    else:
        path = resolve_checkpoint(resume)
    state = load_checkpoint(path)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: checkpoint format {state.get('format')!r}; this version reads {CHECKPOINT_FORMAT}")
    if info.is_main:
        _warn_config_changes(state["config"], config.to_dict(), path)
        log.info("resuming from %s (step %d)", path, state["step"])
    return state


def _warn_config_changes(saved: dict, current: dict, path: Path, prefix: str = "") -> None:
    ignore = {"train.stop_at_step", "train.device", "data.num_workers", "output_dir", "data.frames"}
    for key in sorted(set(saved) | set(current)):
        name = prefix + key
        old, new = saved.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            _warn_config_changes(old, new, path, name + ".")
        elif old != new and name not in ignore:
            log.warning("resume: %s was %r in %s, now %r", name, old, path.name, new)


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
        raise ValueError("train.precision=fp16 needs a CUDA device (use bf16 or fp32 on CPU)")
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
    """SIGTERM / SIGINT set a flag; the loop checkpoints and leaves at the end of the step.
    A second signal gets the previous handler (so a second Ctrl-C still interrupts at once)."""

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
