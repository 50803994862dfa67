"""`batching.shard=time`: each rank loads only the time range its windows need, for series larger than
one node's memory.

Rank r of R takes the r-th contiguous block of every split's window starts and reads just the steps
those windows cover (each block's first start to its last start + W + H, so W + H - 1 steps of overlap
with the next rank), shuffling its training windows among themselves. The scaler is still fitted on
the whole training range: each rank sums the observed readings of the training steps it owns (the
blocks partition them) and the sums are all-reduced, so every rank normalizes identically.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from stgnn_launch.config.schema import Config
from stgnn_launch.data.datasets import dataset_num_steps, load_dataset
from stgnn_launch.data.prepare import (SPLITS, Prepared, fill_missing, scaler_from_sums, scaler_sums,
                                       steps_per_day, time_covariates, window_starts)
from stgnn_launch.data.series import Series
from stgnn_launch.distributed.context import DistContext, all_reduce_sum
from stgnn_launch.errors import UserError


def rank_blocks(starts: dict[str, np.ndarray], rank: int, world: int) -> dict[str, np.ndarray]:
    """This rank's contiguous block of each split's window starts (the same check on every rank)."""
    for split in SPLITS:
        if len(starts[split]) < world:
            raise UserError(f"batching.shard=time: expected at least one {split} window per rank, found "
                            f"{len(starts[split])} {split} windows for {world} ranks")
    return {split: np.array_split(starts[split], world)[rank] for split in SPLITS}


def merged_ranges(blocks: dict[str, np.ndarray], span: int) -> list[tuple[int, int]]:
    """The step ranges the blocks' windows cover, overlapping ones merged, in time order."""
    ranges = sorted((int(b[0]), int(b[-1]) + span) for b in blocks.values())
    merged = [ranges[0]]
    for lo, hi in ranges[1:]:
        if lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return merged


def to_local(global_starts: np.ndarray, ranges: list[tuple[int, int]]) -> np.ndarray:
    """Global step indices -> indices into the concatenation of `ranges`."""
    offsets = np.cumsum([0] + [hi - lo for lo, hi in ranges])
    lows = np.array([lo for lo, _ in ranges])
    which = np.searchsorted(lows, global_starts, side="right") - 1
    return global_starts - lows[which] + offsets[which]


def owned_training_steps(starts: np.ndarray, rank: int, world: int, window: int) -> tuple[int, int]:
    """The training steps whose readings this rank contributes to the scaler: the blocks partition
    [0, last training start + W), the training inputs' range."""
    blocks = np.array_split(starts, world)
    first = int(blocks[rank][0])
    stop = int(blocks[rank + 1][0]) if rank + 1 < world else int(starts[-1]) + window
    return first, stop


def load_time_shard(cfg: Config, ctx: DistContext) -> tuple[Prepared, Series, int]:
    """This rank's Prepared (local steps and starts, global scaler), a Series of its steps (for the graph
    and facts) and the number of training batches every rank takes per epoch."""
    b, d = cfg.batching, cfg.dataset
    total = dataset_num_steps(d)
    starts = window_starts(total, window=b.window, horizon=b.horizon, stride=b.stride, train_ratio=d.train_ratio,
                           test_ratio=d.test_ratio, split=d.split, val_ratio_of_train=d.val_ratio_of_train)
    blocks = rank_blocks(starts, ctx.rank, ctx.world_size)
    ranges = merged_ranges(blocks, b.window + b.horizon)
    pieces = [load_dataset(d, time_range=r) for r in ranges]
    series = pieces[0] if len(pieces) == 1 else Series(
        torch.cat([p.values for p in pieces]), np.concatenate([p.timestamps for p in pieces]),
        pieces[0].sensor_ids, pieces[0].adjacency, pieces[0].feature_names)
    del pieces
    fill_missing(series.values, d.null_value)
    first, stop = owned_training_steps(starts["train"], ctx.rank, ctx.world_size, b.window)
    lo, hi = to_local(np.array([first, stop - 1]), ranges)
    sums = all_reduce_sum(scaler_sums(series.values, int(lo), int(hi) + 1, d.null_value), ctx)
    prepared = Prepared(
        values=series.values, covariates=time_covariates(series.timestamps, d.day_of_week),
        scaler=scaler_from_sums(sums), starts={split: to_local(block, ranges) for split, block in blocks.items()},
        window=b.window, horizon=b.horizon, out_features=1, null_value=d.null_value,
        steps_per_day=steps_per_day(series.step),
    )
    # Every rank must take the same number of DDP steps: the smallest block sets it.
    smallest = min(len(block) for block in np.array_split(starts["train"], ctx.world_size))
    return prepared, series, math.ceil(smallest / b.batch_size)
