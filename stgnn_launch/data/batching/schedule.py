"""The schedule: which window positions rank `rank` of `world` gets, batch by batch.

Whatever the mode, rank r of R sees the same schedule: each epoch one permutation of the training
windows drawn from seed + epoch (identical on every rank), cut into global batches of R x batch_size
windows, of which rank r takes the r-th slice. Evaluation windows are split into R contiguous blocks,
so every window is evaluated exactly once (no padded repeats). With R = 1 and the same seed, all three
modes therefore yield bitwise identical batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TrainSchedule:
    """The training windows' positions of rank `rank` of `world`, epoch by epoch, in batches."""

    num_train: int
    batch_size: int
    shuffle: bool
    seed: int
    rank: int = 0
    world: int = 1
    max_train_batches: int | None = None  # time-sharded ranks: the step count every rank can take

    def epoch_order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.num_train)
        generator = torch.Generator().manual_seed(self.seed + epoch)  # same on every rank
        return torch.randperm(self.num_train, generator=generator)

    def train_positions(self, epoch: int) -> list[torch.Tensor]:
        """This rank's slice of each global batch; a last global batch too small to give every rank a
        window is dropped, since DDP needs every rank to take every step."""
        order = self.epoch_order(epoch)
        step = self.batch_size * self.world
        shards = []
        for i in range(0, order.numel(), step):
            global_batch = order[i:i + step]
            if global_batch.numel() < self.world:
                break
            shards.append(torch.tensor_split(global_batch, self.world)[self.rank])
        return shards[: self.max_train_batches]


def eval_positions(count: int, batch_size: int, rank: int = 0, world: int = 1) -> list[torch.Tensor]:
    """Rank `rank`'s contiguous block of a split's `count` windows, in batches."""
    block = torch.tensor_split(torch.arange(count), world)[rank]
    return list(torch.split(block, batch_size))
