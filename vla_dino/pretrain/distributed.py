"""Process group set-up under torchrun, model wrapping (DDP or FSDP2), and full state dicts
gathered for rank-0 checkpoints. A plain `python -m vla_dino.pretrain` is world size 1 and
takes none of the distributed paths."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from vla_dino.device import resolve_device
from vla_dino.pretrain.errors import DeviceError


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    # The gloo group for the loop's host-side agreements (stop signals, skip counts, RNG states): a new one beside
    # an NCCL run, so they travel over CPU sockets and never queue behind the GPU's work; None: the default group,
    # gloo itself. Either way their tensors live on the CPU.
    host_group: Any = field(default=None, compare=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device_request: str, backend: str) -> DistInfo:
    """Reads torchrun's RANK / LOCAL_RANK / WORLD_SIZE; world size 1 when they are absent."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    try:
        device = resolve_device(device_request, local_rank)
    except ValueError as error:  # the run's own exit code for an unavailable device
        raise DeviceError(str(error)) from error
    if world_size > 1 and not dist.is_initialized():
        if backend == "auto":
            backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    host_group = None
    if world_size > 1 and dist.get_backend() != "gloo":
        host_group = dist.new_group(backend="gloo")
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=device, host_group=host_group)


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo, host: bool = False) -> None:
    """Wait for every rank; `host`: on the gloo host group (its timeout is 30 minutes, NCCL's 10), for waits
    on host-side work such as the frame cache's build."""
    if info.distributed:
        dist.barrier(group=info.host_group if host else None)


def all_gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    if not info.distributed:
        return [obj]
    gathered: list[Any] = [None] * info.world_size
    dist.all_gather_object(gathered, obj, group=info.host_group)
    return gathered


def any_ranks(flags: tuple[bool, ...], info: DistInfo) -> tuple[bool, ...]:
    """Each flag True on every rank if it is True on any (stop signals, unusable batches): one
    all-reduce for all of them, on the host group (it does not wait for the device)."""
    if not info.distributed:
        return flags
    tensor = torch.tensor([int(f) for f in flags])
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=info.host_group)
    return tuple(bool(v) for v in tensor.tolist())


def any_rank(flag: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """A bool device tensor, True on every rank if it is True on any: an all-reduce with no host read
    (the training step's non-finite flag)."""
    if not info.distributed:
        return flag
    flag = flag.to(torch.uint8)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return flag.bool()


def sum_ints(values: tuple[int, ...], info: DistInfo) -> tuple[int, ...]:
    """Element-wise sum over ranks (skip counters); collective when distributed."""
    if not info.distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.int64)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=info.host_group)
    return tuple(int(v) for v in tensor.tolist())



# ------------------------------------------------------------------ wrapping
def wrap_model(model: nn.Module, strategy: str, info: DistInfo, find_unused_parameters: bool = False) -> nn.Module:
    """The module to call forward on. `model` itself keeps the SSL methods (update_teacher, …).

    DDP: gradients all-reduced across ranks; the teacher has no gradients and is kept in
    step because every rank applies the same EMA to the same student weights.
    FSDP2: every transformer block of student and teacher, then the whole model, sharded with
    `fully_shard`; matching shardings let the EMA update act on local shards.
    """
    if not info.distributed:
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [info.device.index] if info.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=find_unused_parameters)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(info.device.type, (info.world_size,))
    for backbone in (model.student_backbone, model.teacher_backbone):
        for block in backbone.blocks:
            fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def model_state_dict(model: nn.Module, strategy: str, info: DistInfo) -> dict[str, torch.Tensor]:
    """The full (unsharded) state dict on CPU; collective under FSDP (call on every rank)."""
    if info.distributed and strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer, strategy: str, info: DistInfo) -> dict:
    if info.distributed and strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return optimizer.state_dict()


def load_model_and_optimizer(
    model: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict, optim_state: dict, strategy: str, info: DistInfo
) -> None:
    if info.distributed and strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True)
        set_model_state_dict(model, model_state, options=options)
        set_optimizer_state_dict(model, optimizer, optim_state, options=options)
        return
    model.load_state_dict(model_state, strict=True)
    optimizer.load_state_dict(optim_state)
