"""Batching strategies behind one interface (see windows.py), the schedule of positions per rank
(schedule.py) and the prefetching feed that overlaps batch assembly with compute (feed.py).

* `standard`   materializes every (x, y) window of every split up front: the field's usual pipeline,
               kept as the memory baseline. The series itself is dropped afterwards.
* `index`      keeps the series once and cuts each batch with one vectorized gather from its starts.
* `dist_index` the same cut over a copy shared by the ranks of a node (see stgnn_launch.distributed),
               each rank taking a disjoint shard of the window starts.
"""

from __future__ import annotations

import torch

from stgnn_launch.data.batching.feed import BatchFeed, StagingRing
from stgnn_launch.data.batching.modes import MODES, DataGeometry, Term, batching_mode
from stgnn_launch.data.batching.schedule import TrainSchedule, eval_positions
from stgnn_launch.data.batching.windows import (Batch, Finisher, IndexedWindows, MaterializedWindows, Parts,
                                                WindowSource, take)
from stgnn_launch.data.prepare import Prepared


__all__ = ["MODES", "Batch", "BatchFeed", "DataGeometry", "Finisher", "IndexedWindows",
           "MaterializedWindows", "Parts", "StagingRing", "Term", "TrainSchedule", "WindowSource", "batching_mode",
           "build_source", "eval_positions", "take"]


def build_source(mode: str, prepared: Prepared, data_device: torch.device,
                 compute_device: torch.device | None = None) -> WindowSource:
    """The window source of `mode`, its data on `data_device` (the series, or standard's windows)."""
    return batching_mode(mode).source(prepared, data_device, compute_device)
