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
from dataclasses import replace

import numpy as np
import torch

from stgnn_launch.config.schema import DatasetConfig
from stgnn_launch.data.datasets import dataset_num_steps, load_dataset
from stgnn_launch.data.prepare import (SPLITS, Prepared, PrepareSpec, fill_missing, input_ranges, prepare,
                                       scaler_from_sums, scaler_sums)
from stgnn_launch.data.prepare.split import clip_ranges
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


def owned_scaler_ranges(starts: np.ndarray, rank: int, world: int, window: int) -> list[tuple[int, int]]:
    """The training-input steps this rank contributes to the scaler: the steps of every training input
    (`input_ranges`) from this rank's first training start to the next rank's. The ranks' pieces partition
    exactly the steps the unsharded scaler sums over, and each lies inside what this rank loaded."""
    blocks = np.array_split(starts, world)
    lo = int(blocks[rank][0])
    hi = int(blocks[rank + 1][0]) if rank + 1 < world else int(starts[-1]) + window
    return clip_ranges(input_ranges(blocks[rank], window), lo, hi)


def local_ranges(ranges: list[tuple[int, int]], loaded: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Global step ranges (inside the loaded ones) -> ranges of local indices."""
    out = []
    for lo, hi in ranges:
        first = int(to_local(np.array([lo]), loaded)[0])
        out.append((first, first + hi - lo))
    return out


def load_time_shard(dataset: DatasetConfig, prep: PrepareSpec, ctx: DistContext, batch_size: int,
                    dtype: torch.dtype = torch.float32) -> tuple[Prepared, Series, int, int]:
    """This rank's Prepared (local steps and starts, global scaler), a Series of its steps (for the graph
    and facts), the number of training batches every rank takes per epoch, and the readings filled."""
    total = dataset_num_steps(dataset)
    starts = prep.starts(total)
    blocks = rank_blocks(starts, ctx.rank, ctx.world_size)
    ranges = merged_ranges(blocks, prep.window + prep.horizon)
    pieces = [load_dataset(dataset, time_range=r) for r in ranges]
    series = pieces[0] if len(pieces) == 1 else Series(
        torch.cat([p.values for p in pieces]), np.concatenate([p.timestamps for p in pieces]),
        pieces[0].sensor_ids, pieces[0].graph, pieces[0].feature_names, regular_time=False)  # ranges with gaps
    del pieces
    filled = fill_missing(series.values, prep.null_value)
    if dtype != series.values.dtype:  # the resident precision, before the scaler sees the values
        series = replace(series, values=series.values.to(dtype), regular_time=len(ranges) == 1)
    owned = local_ranges(owned_scaler_ranges(starts["train"], ctx.rank, ctx.world_size, prep.window), ranges)
    # waits for every rank's load: on the setup group, with the long timeout
    sums = all_reduce_sum(scaler_sums(series.values, owned, prep.null_value), ctx, setup=True)
    local_starts = {split: to_local(block, ranges) for split, block in blocks.items()}
    prepared = prepare(series, prep, starts=local_starts, scaler=scaler_from_sums(sums))
    # Every rank must take the same number of DDP steps: the smallest block sets it.
    smallest = min(len(block) for block in np.array_split(starts["train"], ctx.world_size))
    return prepared, series, math.ceil(smallest / batch_size), filled
