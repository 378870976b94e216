"""A deterministic, resumable, rank-sharded batch sampler.

Epoch `e` is a permutation drawn from `seed + e` alone, split across ranks the way
`torch.utils.data.DistributedSampler` does (rank r takes every world_size-th index), cut into
full batches. The position is `(epoch, batch_index)`: a resumed run starts exactly at the next
unseen batch, with no dependence on how far the previous process got.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler


class ResumableBatchSampler(Sampler[list[int]]):
    def __init__(self, num_samples: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.batches_per_epoch = num_samples // (batch_size * world_size)
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"the dataset has {num_samples} frames, fewer than one global batch "
                f"(batch_size {batch_size} × {world_size} processes); add frames or lower --batch-size"
            )
        self.epoch = 0
        self.start_batch = 0

    def set_position(self, epoch: int, batch_index: int) -> None:
        if not 0 <= batch_index < self.batches_per_epoch:
            raise ValueError(f"batch index {batch_index} outside 0..{self.batches_per_epoch - 1}")
        self.epoch, self.start_batch = epoch, batch_index

    def epoch_indices(self, epoch: int) -> list[int]:
        """This rank's indices for `epoch`, trimmed to whole batches."""
        generator = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(self.num_samples, generator=generator).tolist()
        return order[self.rank :: self.world_size][: self.batches_per_epoch * self.batch_size]

    def __iter__(self) -> Iterator[list[int]]:
        indices = self.epoch_indices(self.epoch)
        for b in range(self.start_batch, self.batches_per_epoch):
            yield indices[b * self.batch_size : (b + 1) * self.batch_size]

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch
