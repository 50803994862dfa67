"""What each batching mode knows, beside its window source (windows.py): how many windows a series gives,
the bytes its data takes where it lives, what one staged batch costs, and its memory terms for the planner.

planning/estimate.py and planning/layout.py ask the mode object (`batching_mode(name)`) instead of branching
on its name; `MODES` is the one place a name meets its object (build_source reads it too).

* `standard`   every window of every split materialised up front: W + H copies of each step.
* `index`      the series once; on a CPU, also the model-input table (windows.py) when it is small enough.
* `dist_index` the series once per node (shared by its ranks) or per time shard; no per-rank table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from stgnn_launch.config.schema import BatchingMode
from stgnn_launch.data.batching.windows import (INPUT_TABLE_MAX_BYTES, IndexedWindows, MaterializedWindows,
                                                WindowSource)
from stgnn_launch.data.prepare import Prepared
from stgnn_launch.data.prepare.split import window_count

FLOAT32_BYTES = 4  # windows, covariates and model inputs are float32 whatever the series' resident dtype


@dataclass(frozen=True)
class Term:
    """One line of the memory estimate: bytes in one phase, on the host (per rank or once per node) and on
    the device."""

    name: str
    phase: str  # load | train | both
    host_rank: int = 0  # private host bytes of each rank
    host_node: int = 0  # host bytes shared by the node's ranks (counted once per node)
    device_rank: int = 0  # device bytes of each rank
    tensors: bool = True  # device bytes the caching allocator holds as tensors (False: context, NCCL)


@dataclass(frozen=True)
class DataGeometry:
    """The sizes a mode's bytes are made of, known from the config and the file's shape alone."""

    steps: int  # T of the whole series
    nodes: int  # N
    features: int  # F
    covariates: int  # C (at most)
    out_features: int  # F_out
    window: int
    horizon: int
    stride: int
    resident_steps: int  # steps one rank holds (its range plus a window's overlap under time shards)
    itemsize: int  # bytes of one reading of the resident series

    @property
    def windows(self) -> int:
        return window_count(self.steps, self.window + self.horizon, self.stride)

    @property
    def sample_bytes(self) -> int:
        """One finished (x, y) window: W x N x (F + C) inputs and H x N x F_out targets, float32."""
        n = self.nodes
        return (self.window * n * (self.features + self.covariates) + self.horizon * n * self.out_features) \
            * FLOAT32_BYTES

    @property
    def covariate_bytes(self) -> int:
        return self.steps * self.covariates * FLOAT32_BYTES


class Placement(Protocol):
    """Where the data lives (planning/layout.Layout is one)."""

    @property
    def data_on_gpu(self) -> bool: ...

    @property
    def node_shared(self) -> bool: ...

    @property
    def cuda(self) -> bool: ...


class StandardMode:
    name = BatchingMode.standard
    keeps_series = False  # only the windows stay: the prepared series can be dropped
    materialises_windows = True
    shards_ranks = False  # every rank holds every window and takes its slice of the schedule

    def source(self, prepared: Prepared, data_device: torch.device,
               compute_device: torch.device | None = None) -> WindowSource:
        return MaterializedWindows(prepared, data_device)

    def data_bytes(self, g: DataGeometry) -> int:
        return g.windows * g.sample_bytes

    def staging_slot_bytes(self, g: DataGeometry, batch: int) -> int:
        return batch * g.sample_bytes  # finished windows are staged as they are

    def data_terms(self, g: DataGeometry, where: Placement) -> list[Term]:
        """The windows (host or device), and while they are cut: the series and a chunk of windows."""
        windows = self.data_bytes(g)
        on_gpu = where.data_on_gpu
        chunk = 1024  # MaterializedWindows' chunk: its finished windows twice (the copy) and their raw rows
        return [Term("materialised windows (all splits)", "both", 0 if on_gpu else windows,
                     device_rank=windows if on_gpu else 0),
                Term("series while windows are cut", "load", g.steps * g.nodes * g.features * FLOAT32_BYTES
                     + g.covariate_bytes),
                Term("window chunk being cut", "load", 2 * chunk * g.sample_bytes
                     + chunk * (g.window + g.horizon) * g.nodes * g.features * FLOAT32_BYTES)]


class IndexMode:
    name = BatchingMode.index
    keeps_series = True
    materialises_windows = False
    shards_ranks = False
    input_table = True  # one process, its own copy: finish on the CPU from a table built once (windows.py)

    def source(self, prepared: Prepared, data_device: torch.device,
               compute_device: torch.device | None = None) -> WindowSource:
        return IndexedWindows(prepared, data_device, compute_device, input_table=self.input_table)

    def data_bytes(self, g: DataGeometry) -> int:
        return g.steps * g.nodes * g.features * g.itemsize  # the whole series, before any time shard

    def staging_slot_bytes(self, g: DataGeometry, batch: int) -> int:
        return batch * ((g.window + g.horizon) * g.nodes * g.features * g.itemsize + 8)  # raw rows + a start

    def data_terms(self, g: DataGeometry, where: Placement) -> list[Term]:
        """The resident series where it lives (node-shared, private, or on each GPU), the covariates, and the
        CPU's model-input table."""
        series = g.resident_steps * g.nodes * g.features * g.itemsize
        if where.node_shared:
            terms = [Term("resident series (node-shared)", "both", host_node=series)]
        elif not where.data_on_gpu:
            terms = [Term("resident series", "both", series)]
        else:  # read into host memory, copied to the GPU, the host copy dropped
            terms = [Term("series read before the GPU copy", "load", series)]
        if where.data_on_gpu:
            terms.append(Term("resident series (on each GPU)", "both", device_rank=series))
        if g.itemsize != FLOAT32_BYTES:  # read as float32, then cast: both exist for a moment
            terms.append(Term("float32 read before the cast", "load",
                              g.resident_steps * g.nodes * g.features * FLOAT32_BYTES))
        terms.append(Term("covariates table", "both", g.covariate_bytes))
        table = g.steps * g.nodes * (g.features + g.covariates) * FLOAT32_BYTES
        if self.input_table and not where.cuda and table <= INPUT_TABLE_MAX_BYTES:
            terms.append(Term("model-input table (z-scored once)", "both", table))  # windows.py: CPU batches
        return terms


class DistIndexMode(IndexMode):
    name = BatchingMode.dist_index
    shards_ranks = True  # ranks share the node's copy (shard=index) or each load their range (shard=time)
    input_table = False  # nothing per rank beside the node's one copy: finish per batch (the same values)


MODES: dict[BatchingMode, StandardMode | IndexMode] = {m.name: m for m in (StandardMode(), IndexMode(),
                                                                         DistIndexMode())}


def batching_mode(name: str) -> StandardMode | IndexMode:
    """The mode object of batching.mode (a BatchingMode, or its string)."""
    return MODES[BatchingMode(name)]
