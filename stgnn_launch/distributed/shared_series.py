"""One copy of the series per node: the first local rank loads it into POSIX shared memory and the
node's other ranks map the same pages, so host memory for data stays 1x the series per node whatever
the number of ranks on it.

The segment's name is unlinked as soon as every rank has mapped it: the pages live exactly as long as
some rank still maps them, so a crashed job leaves nothing behind in /dev/shm.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from multiprocessing import resource_tracker, shared_memory

import numpy as np
import torch

from stgnn_launch.config.schema import Config
from stgnn_launch.data.datasets import load_dataset
from stgnn_launch.data.prepare import fill_missing
from stgnn_launch.data.series import Series
from stgnn_launch.distributed.context import DistContext, barrier
from stgnn_launch.errors import UserError

SHM_DIR = "/dev/shm"
_MAPPED: list[shared_memory.SharedMemory] = []  # kept open for the life of the process (tensors view them)


def segment_name(cfg: Config, ctx: DistContext) -> str:
    """Unique per run, node and torchrun attempt; the same on every rank of the node."""
    key = "|".join([str(cfg.run_dir), os.environ.get("TORCHELASTIC_RUN_ID", ""),
                    os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"), os.environ.get("MASTER_PORT", ""),
                    str(ctx.node_rank)])
    return "stgnn_" + hashlib.sha1(key.encode()).hexdigest()[:16]


def _check_room(nbytes: int) -> None:
    """Shared memory is sized lazily: a full /dev/shm would kill the job with SIGBUS later, so ask now."""
    if os.path.isdir(SHM_DIR):
        stat = os.statvfs(SHM_DIR)
        free = stat.f_bavail * stat.f_frsize
        if free < nbytes:
            raise UserError(f"{SHM_DIR}: expected {nbytes / 2**20:.0f} MiB free for the node's shared copy of "
                            f"the series, found {free / 2**20:.0f} MiB (raise the tmpfs size or use fewer nodes' "
                            f"worth of data per node with batching.shard=time)")


def _publish(series: Series, name: str) -> shared_memory.SharedMemory:
    meta = pickle.dumps({"shape": tuple(series.values.shape), "timestamps": series.timestamps,
                         "sensor_ids": series.sensor_ids, "adjacency": series.adjacency,
                         "feature_names": series.feature_names})
    nbytes = series.nbytes
    _check_room(nbytes + len(meta))
    shm = shared_memory.SharedMemory(name=name, create=True, size=8 + len(meta) + nbytes)
    shm.buf[:8] = len(meta).to_bytes(8, "little")
    shm.buf[8:8 + len(meta)] = meta
    view = np.ndarray(series.values.shape, dtype=np.float32, buffer=shm.buf, offset=_values_offset(len(meta)))
    view[...] = series.values.numpy()
    return shm


def _values_offset(meta_len: int) -> int:
    return 8 + meta_len


def _series_over(shm: shared_memory.SharedMemory) -> Series:
    """A Series whose values are the segment's pages (no copy)."""
    meta_len = int.from_bytes(bytes(shm.buf[:8]), "little")
    meta = pickle.loads(bytes(shm.buf[8:8 + meta_len]))  # written by this node's first rank
    count = int(np.prod(meta["shape"]))
    values = torch.frombuffer(shm.buf, dtype=torch.float32, count=count,
                              offset=_values_offset(meta_len)).view(meta["shape"])
    return Series(values, meta["timestamps"], meta["sensor_ids"], meta["adjacency"], meta["feature_names"])


def _attach(name: str) -> shared_memory.SharedMemory:
    shm = shared_memory.SharedMemory(name=name)
    # Python 3.11's tracker would unlink the segment when this process exits; the creator owns it.
    resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
    return shm


def load_node_shared(cfg: Config, ctx: DistContext) -> Series:
    """Every rank of the node gets a Series whose values are the same shared pages."""
    name = segment_name(cfg, ctx)
    creator = ctx.local_rank == 0
    error: Exception | None = None
    if creator:
        try:
            series = load_dataset(cfg.dataset)
            fill_missing(series.values, cfg.dataset.null_value)
            _MAPPED.append(_publish(series, name))
            del series
        except Exception as err:  # let the other ranks learn of it rather than hang at the barrier
            error = err
    failed = _any_failed(error is not None, ctx)
    if failed:
        if error is not None:
            raise error
        raise UserError("shared series: the node's first rank could not load the dataset (see its error)")
    if not creator:
        _MAPPED.append(_attach(name))
    barrier(ctx)
    shm = _MAPPED[-1]
    if creator:
        shm.unlink()  # pages stay while mapped; nothing is left behind after the job
    return _series_over(shm)


def _any_failed(failed: bool, ctx: DistContext) -> bool:
    if not ctx.distributed:
        return failed
    flag = torch.tensor([1.0 if failed else 0.0], device=ctx.device if ctx.backend == "nccl" else "cpu")
    torch.distributed.all_reduce(flag)
    return bool(flag.item() > 0)
