"""Where a rank's data lives and how it is shared, decided once: one function per decision.

The memory estimate (estimate.py) and the Plan (plan.py) both read the Layout that `decide_layout` returns,
so the planner never works a decision out a second time from the raw config.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from stgnn_launch.config.schema import Config, Covariates, DataDevice, Shard
from stgnn_launch.data.batching.modes import DataGeometry, StandardMode, IndexMode, batching_mode
from stgnn_launch.data.prepare import PrepareSpec
from stgnn_launch.distributed.context import RankEnv
from stgnn_launch.errors import UserError
from stgnn_launch.planning.machine import DTYPES, Machine

GPU_DATA_SHARE = 0.5  # batching.device=auto puts the data on the GPU when it takes at most this share


@dataclass(frozen=True)
class Layout:
    mode: str  # batching.mode (a BatchingMode); `batching` is its object
    shard: str  # none | index (ranks share the node's series) | time (each rank loads its range)
    node_shared: bool  # one host copy of the series per node, in shared memory (GPU ranks copy from it)
    compute_device: torch.device
    backend: str | None  # nccl | gloo | None (one process)
    data_device: torch.device  # where the series (or standard's windows) lives for the batch gather
    series_dtype: torch.dtype
    world: int
    local_world: int
    notes: tuple[str, ...] = ()  # why a choice was made, for the start-up block

    @property
    def cuda(self) -> bool:
        return self.compute_device.type == "cuda"

    @property
    def data_on_gpu(self) -> bool:
        return self.data_device.type == "cuda"

    @property
    def batching(self) -> StandardMode | IndexMode:
        return batching_mode(self.mode)

    def resident_steps(self, steps: int, cfg: Config) -> int:
        """Steps of the series one rank holds: its own range plus a window's overlap under time shards."""
        if self.shard != "time":
            return steps
        return math.ceil(steps / self.world) + cfg.batching.window + cfg.batching.horizon - 1


def prepare_spec(cfg: Config) -> PrepareSpec:
    b, d = cfg.batching, cfg.dataset
    return PrepareSpec(window=b.window, horizon=b.horizon, stride=b.stride, split=d.split,
                       train_ratio=d.train_ratio, test_ratio=d.test_ratio, val_ratio_of_train=d.val_ratio_of_train,
                       null_value=d.null_value, covariates=d.covariates, day_of_week=d.day_of_week)


def data_geometry(cfg: Config, shape: tuple[int, int, int], layout: Layout | None = None) -> DataGeometry:
    """The sizes of the data of `shape` under this config, as one rank of `layout` holds it. Without a layout
    (before the data device is decided): every step, and the covariates any series could have."""
    t, n, f = shape
    b = cfg.batching
    if layout is None:  # time of day and day of week, at most (a weekly series has none)
        covariates, out_features, steps = 1 + int(cfg.dataset.day_of_week), 1, t
    else:
        covariates, out_features, steps = covariate_count(cfg), prepare_spec(cfg).out_features, \
            layout.resident_steps(t, cfg)
    return DataGeometry(steps=t, nodes=n, features=f, covariates=covariates, out_features=out_features,
                        window=b.window, horizon=b.horizon, stride=b.stride, resident_steps=steps,
                        itemsize=DTYPES[b.dtype].itemsize)


def estimated_data_bytes(cfg: Config, shape: tuple[int, int, int]) -> int:
    """Bytes the data takes where it lives: the resident series (index modes) or every window (standard)."""
    return batching_mode(cfg.batching.mode).data_bytes(data_geometry(cfg, shape))


def decide_compute(cfg: Config, env: RankEnv, machine: Machine) -> tuple[torch.device, str | None]:
    """This rank's device and the process group's backend. NCCL: one GPU per rank. launcher.backend=gloo
    lets ranks share the node's GPUs round-robin (several ranks on one GPU: NCCL cannot do that)."""
    cuda = machine.gpus > 0 and not cfg.launcher.cpu
    gloo = cfg.launcher.backend == "gloo" or not cuda
    if cuda and not gloo and env.local_rank >= machine.gpus:
        raise UserError(f"gpus: expected at most {machine.gpus} ranks per node (one per GPU under NCCL; "
                        f"launcher.backend=gloo shares GPUs), found local rank {env.local_rank}")
    compute = torch.device("cuda", env.local_rank % machine.gpus) if cuda else torch.device("cpu")
    backend = None if env.world_size == 1 else ("gloo" if gloo else "nccl")
    return compute, backend


def decide_shard(cfg: Config, world: int) -> str:
    b = cfg.batching
    if not batching_mode(b.mode).shards_ranks or world == 1:
        return "none"
    return str(Shard(b.shard))


def decide_node_sharing(shard: str, local_world: int) -> bool:
    """One host copy per node whenever the node's ranks read the same series, on CPU and GPU nodes alike:
    GPU ranks make their device copies from the shared pages and hold no private host copy."""
    return shard == Shard.index and local_world > 1


def decide_data_device(cfg: Config, compute: torch.device, machine: Machine,
                       dataset_shape: Callable[[], tuple[int, int, int]] | None) -> tuple[torch.device, str | None]:
    """batching.device: cpu, gpu, or auto (the GPU when the data takes at most GPU_DATA_SHARE of its memory)."""
    device = cfg.batching.device
    if compute.type != "cuda":
        return torch.device("cpu"), ("batching.device=gpu without a GPU: the data stays in host memory"
                                     if device == DataDevice.gpu else None)
    if device == DataDevice.gpu:
        return compute, None
    if device == DataDevice.cpu:
        return torch.device("cpu"), None
    need = estimated_data_bytes(cfg, dataset_shape()) if dataset_shape and machine.gpu_memory_bytes else None
    if need is not None and need <= GPU_DATA_SHARE * machine.gpu_memory_bytes:
        return compute, f"data on the GPU ({need / 2**30:.2f} GiB <= {GPU_DATA_SHARE:.0%} of its memory)"
    return torch.device("cpu"), "data in host memory (too large for the GPU, or its memory unknown)"


def decide_layout(cfg: Config, env: RankEnv, machine: Machine,
                  dataset_shape: Callable[[], tuple[int, int, int]] | None = None) -> Layout:
    """Everything about where the data lives, for this rank; `dataset_shape` (T, N, F without reading values)
    is asked only when batching.device=auto must weigh the data against the GPU's memory."""
    compute, backend = decide_compute(cfg, env, machine)
    shard = decide_shard(cfg, env.world_size)
    data_device, note = decide_data_device(cfg, compute, machine, dataset_shape)
    node_shared = decide_node_sharing(shard, env.local_world_size)
    notes = (note,) if note else ()
    if node_shared and data_device.type == "cuda":
        notes += ("series copied to each GPU from the node's one shared host copy",)
    return Layout(mode=cfg.batching.mode, shard=shard, node_shared=node_shared, compute_device=compute,
                  backend=backend, data_device=data_device, series_dtype=DTYPES[cfg.batching.dtype],
                  world=env.world_size, local_world=env.local_world_size, notes=notes)


def covariate_count(cfg: Config) -> int:
    """At most: time of day unless disabled (a daily or longer step has none), day of week if asked."""
    return int(cfg.dataset.covariates != Covariates.none) + int(cfg.dataset.day_of_week)
