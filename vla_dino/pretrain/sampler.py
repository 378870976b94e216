"""A deterministic, resumable, rank-sharded batch sampler.

Epoch `e` is a permutation drawn from `seed + e` alone, split across ranks the way
`torch.utils.data.DistributedSampler` does (rank r takes every world_size-th index), cut into
full batches. The position is `(epoch, batch_index)` (`next_position` steps it, across epochs): a
resumed run starts exactly at the next unseen batch, with no dependence on how far the previous
process got. `batches(epoch, batch_index)` runs on through every later epoch, each entry an
`(index, epoch)` pair (`FrameDataset` draws temporal neighbours per epoch): one DataLoader serves a
whole run, so its workers start once and an epoch boundary costs nothing.

Checkpoints store the position as *samples seen* of the epoch's permutation (`samples_done`),
which does not depend on the batch size or the number of processes: rank r takes
perm[r::W], so after b batches of B the W ranks have together consumed exactly perm[:b·B·W].
`position_for_samples` turns it back into a batch index for any batch size and world size.
"""

from __future__ import annotations

from typing import Iterator

import torch


class ResumableBatchSampler:
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

    def batches(self, epoch: int, batch_index: int = 0) -> Iterator[list[tuple[int, int]]]:
        """Endless: batch `batch_index` of `epoch` and every batch after it, across epochs, as this rank's
        `(dataset index, epoch)` pairs (a DataLoader's `batch_sampler`)."""
        if not 0 <= batch_index < self.batches_per_epoch:
            raise ValueError(f"batch index {batch_index} outside 0..{self.batches_per_epoch - 1}")
        while True:
            indices = self.epoch_indices(epoch)
            for b in range(batch_index, self.batches_per_epoch):
                yield [(index, epoch) for index in indices[b * self.batch_size : (b + 1) * self.batch_size]]
            epoch, batch_index = epoch + 1, 0

    def next_position(self, epoch: int, batch_index: int) -> tuple[int, int]:
        """The (epoch, batch_index) after batch `batch_index` of `epoch`: the next epoch's first
        batch after the last one."""
        batch_index += 1
        return (epoch + 1, 0) if batch_index == self.batches_per_epoch else (epoch, batch_index)

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    def samples_done(self, batch_index: int) -> int:
        """Samples of the epoch's permutation consumed (all ranks) before batch `batch_index`."""
        return batch_index * self.global_batch

    def position_for_samples(self, epoch: int, samples_done: int) -> tuple[int, int, int]:
        """(epoch, batch_index, repeated): the batch that continues after `samples_done` samples of
        `epoch`, rounded down to a whole batch, so `repeated` samples are seen again rather than
        skipped; the next epoch when the remainder cannot fill a batch."""
        if samples_done < 0:
            raise ValueError(f"samples_done {samples_done} < 0")
        batch_index = samples_done // self.global_batch
        if batch_index >= self.batches_per_epoch:
            return epoch + 1, 0, 0
        return epoch, batch_index, samples_done - batch_index * self.global_batch

    def epoch_indices(self, epoch: int) -> list[int]:
        """This rank's indices for `epoch`, trimmed to whole batches."""
        generator = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(self.num_samples, generator=generator).tolist()
        return order[self.rank :: self.world_size][: self.batches_per_epoch * self.batch_size]
