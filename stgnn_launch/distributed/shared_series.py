"""One copy of the series per node: the first local rank reads it straight into POSIX shared memory,
fills its missing readings and computes the scaler's sums once, and the node's other ranks map the same
pages and read those statistics, so host memory for data stays 1x the series per node whatever the
number of ranks on it, and no rank scans the series again.

Two segments per node: the values, which HDF5 readers write directly into place (no private copy
first), and a small header (shape, dtype, timestamps, sensor ids, the graph as an edge list, the
statistics) written once the values are complete.

The segment's name is unlinked as soon as every rank has mapped it: the pages live exactly as long as
some rank still maps them, so a crashed job leaves nothing behind in /dev/shm. Names are unique per run,
node and host, and the same over its attempts: a segment left by a dead attempt (or a killed run) is
removed by the next.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import socket
from dataclasses import dataclass
from pathlib import Path
from multiprocessing import resource_tracker, shared_memory

import numpy as np
import torch

from stgnn_launch.config.schema import DatasetConfig
from stgnn_launch.data.datasets import load_dataset
from stgnn_launch.data.prepare import PrepareSpec, fill_missing, training_scaler_sums
from stgnn_launch.data.graph import SparseGraph
from stgnn_launch.data.series import Series
from stgnn_launch.distributed.context import DistContext, any_rank_failed, wait_for_all
from stgnn_launch.errors import UserError

SHM_DIR = "/dev/shm"
_MAPPED: list[shared_memory.SharedMemory] = []  # kept open for the life of the process (tensors view them)


@dataclass(frozen=True)
class NodeStats:
    """What the node's first rank computed once for every rank of the node."""

    filled: int  # non-finite readings rewritten to the missing marker
    scaler_sums: torch.Tensor  # 3 x F float64 over the training inputs


def segment_name(run_dir: str | None, node_rank: int) -> str:
    """The same on every rank of the node and on every attempt of the run (torchrun restarts, requeues,
    a rerun after a kill), so that a dead attempt's segment is found and reclaimed by the next one. Two
    runs never share it: one run directory holds one run at a time (stgnn_launch/run_lock.py), and the
    node's other ranks attach only after its first rank has created the segment afresh."""
    key = "|".join([str(Path(run_dir).resolve()) if run_dir else "", socket.gethostname(), str(node_rank)])
    return "stgnn_" + hashlib.sha1(key.encode()).hexdigest()[:16]


def _check_room(nbytes: int) -> None:
    """Shared memory is sized lazily: a full /dev/shm would kill the job with SIGBUS later, so ask now."""
    if os.path.isdir(SHM_DIR):
        stat = os.statvfs(SHM_DIR)
        free = stat.f_bavail * stat.f_frsize
        if free < nbytes:
            raise UserError(f"{SHM_DIR}: expected {nbytes / 2**20:.0f} MiB free for the node's shared copy of "
                            f"the series, found {free / 2**20:.0f} MiB (raise the tmpfs size or use "
                            f"batching.shard=time, which loads only each rank's range)")


def _create(name: str, size: int) -> shared_memory.SharedMemory:
    try:
        return shared_memory.SharedMemory(name=name, create=True, size=max(1, size))
    except FileExistsError:  # left by a dead attempt of this same run and node: its ranks are gone
        stale = shared_memory.SharedMemory(name=name)
        stale.close()
        stale.unlink()
        return shared_memory.SharedMemory(name=name, create=True, size=max(1, size))


class _Segment:
    """The creator's values segment, allocated when a reader asks for its output array."""

    def __init__(self, name: str, dtype: torch.dtype) -> None:
        self.name, self.dtype = name, dtype
        self.shm: shared_memory.SharedMemory | None = None

    def alloc(self, shape: tuple[int, ...]) -> torch.Tensor:
        count = int(np.prod(shape))
        _check_room(count * self.dtype.itemsize)
        self.shm = _create(self.name, count * self.dtype.itemsize)
        return torch.frombuffer(self.shm.buf, dtype=self.dtype, count=count).view(shape)

    def float32_alloc(self, shape: tuple[int, ...]) -> np.ndarray:
        """An allocator for the HDF5 readers, which write float32 in place."""
        return self.alloc(shape).numpy()


def _header(series: Series, dtype: torch.dtype, stats: NodeStats) -> bytes:
    """Everything but the values, the graph as an edge list (a dense 11,160 x 11,160 would be 498 MB)."""
    graph = series.graph
    return pickle.dumps({"shape": tuple(series.values.shape), "dtype": str(dtype).replace("torch.", ""),
                         "timestamps": series.timestamps, "sensor_ids": series.sensor_ids,
                         "edges": (graph.rows, graph.cols, graph.weights, graph.num_nodes),
                         "feature_names": series.feature_names, "filled": stats.filled,
                         "scaler_sums": stats.scaler_sums}, protocol=pickle.HIGHEST_PROTOCOL)


def _publish(dataset: DatasetConfig, prep: PrepareSpec, name: str,
             dtype: torch.dtype) -> list[shared_memory.SharedMemory]:
    """Read the series into a new segment, fill missing readings and compute the scaler's sums there,
    then publish the header segment (its existence tells the other ranks the values are complete)."""
    segment = _Segment(name, dtype)
    if dtype == torch.float32:
        series = load_dataset(dataset, alloc=segment.float32_alloc)
        values = series.values
        if segment.shm is None:  # a reader without an allocator (JSON layouts, small): one copy
            values = segment.alloc(tuple(series.values.shape))
            values.copy_(series.values)
    else:  # reduced precision: read as float32, cast into the segment
        series = load_dataset(dataset)
        values = segment.alloc(tuple(series.values.shape))
        values.copy_(series.values)
    filled = fill_missing(values, prep.null_value)
    starts = prep.starts(values.shape[0])
    stats = NodeStats(filled, training_scaler_sums(values, starts["train"], prep.window, prep.null_value))
    header = _header(series, dtype, stats)
    head = _create(name + "_h", len(header))
    head.buf[:len(header)] = header
    return [segment.shm, head]


def _series_over(values_shm: shared_memory.SharedMemory,
                 head_shm: shared_memory.SharedMemory) -> tuple[Series, NodeStats]:
    """A Series whose values are the segment's pages (no copy), and the node's statistics."""
    header = pickle.loads(bytes(head_shm.buf))  # written by this node's first rank
    dtype = getattr(torch, header["dtype"])
    shape = header["shape"]
    values = torch.frombuffer(values_shm.buf, dtype=dtype, count=int(np.prod(shape))).view(shape)
    graph = SparseGraph(*header["edges"])  # never dense, never through the launch
    series = Series(values, header["timestamps"], header["sensor_ids"], graph, header["feature_names"])
    return series, NodeStats(header["filled"], header["scaler_sums"])


def _attach(name: str) -> shared_memory.SharedMemory:
    shm = shared_memory.SharedMemory(name=name)
    # Python 3.11's tracker would unlink the segment when this process exits; the creator owns it.
    resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
    return shm


def load_node_shared(dataset: DatasetConfig, prep: PrepareSpec, dtype: torch.dtype, ctx: DistContext,
                     run_dir: str | None) -> tuple[Series, NodeStats]:
    """Every rank of the node gets a Series whose values are the same shared pages, and the statistics
    the node's first rank computed once."""
    name = segment_name(run_dir, ctx.node_rank)
    creator = ctx.local_rank == 0
    error: Exception | None = None
    mapped: list[shared_memory.SharedMemory] = []
    if creator:
        try:
            mapped = _publish(dataset, prep, name, dtype)
        except Exception as err:  # let the other ranks learn of it rather than hang at the barrier
            error = err
    if any_rank_failed(error is not None, ctx):  # the others wait for the load here (gloo, long timeout)
        if error is not None:
            raise error
        raise UserError("shared series: the node's first rank could not load the dataset (see its error)")
    if not creator:
        mapped = [_attach(name), _attach(name + "_h")]
    _MAPPED.extend(mapped)
    wait_for_all(ctx)
    if creator:
        for shm in mapped:
            shm.unlink()  # pages stay while mapped; nothing is left behind after the job
    return _series_over(*mapped)

