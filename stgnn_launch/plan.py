"""One plan per rank, decided once from the config and the machine, that every later step reads.

Mode, sharding, devices, resident precision, prefetching, threads, batch sizes and the learning rate
are decided here and nowhere else; the data path, the trainer and the record only read the plan.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Callable

import torch

from stgnn_launch.config.schema import Config
from stgnn_launch.data.prepare import PrepareSpec
from stgnn_launch.distributed.context import RankEnv, usable_cores
from stgnn_launch.errors import UserError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
GPU_DATA_SHARE = 0.5  # batching.device=auto puts the data on the GPU when it takes at most this share


@dataclass(frozen=True)
class Machine:
    """What this node offers a rank."""

    cores: int
    gpus: int  # CUDA devices visible (0 on CPU nodes or with launcher.cpu=true)
    gpu_memory_bytes: int | None = None  # of one device

    @classmethod
    def detect(cls, cpu_only: bool = False) -> "Machine":
        gpus = 0 if cpu_only or not torch.cuda.is_available() else torch.cuda.device_count()
        memory = torch.cuda.get_device_properties(0).total_memory if gpus else None
        return cls(cores=usable_cores(), gpus=gpus, gpu_memory_bytes=memory)


@dataclass(frozen=True)
class Plan:
    mode: str  # standard | index | dist_index
    shard: str  # none | index (ranks share the node's series) | time (each rank loads its range)
    node_shared: bool  # one copy of the series per node, in shared memory
    compute_device: torch.device
    backend: str | None  # nccl | gloo | None (one process)
    data_device: torch.device  # where the series (or standard's windows) lives
    series_dtype: torch.dtype
    prefetch: bool
    threads: int  # torch intra-op threads of this rank
    batch_size: int  # per rank
    eval_batch_size: int
    global_batch_size: int
    lr: float
    schedule_rank: int  # the rank and world the batch schedule shards over ((0, 1) for time shards)
    schedule_world: int
    prep: PrepareSpec
    dist_timeout_s: float
    notes: list[str] = field(default_factory=list)  # why a choice was made, for the start-up block

    @property
    def data_on_gpu(self) -> bool:
        return self.data_device.type == "cuda"


def prepare_spec(cfg: Config) -> PrepareSpec:
    b, d = cfg.batching, cfg.dataset
    return PrepareSpec(window=b.window, horizon=b.horizon, stride=b.stride, split=d.split,
                       train_ratio=d.train_ratio, test_ratio=d.test_ratio, val_ratio_of_train=d.val_ratio_of_train,
                       null_value=d.null_value, covariates=d.covariates, day_of_week=d.day_of_week)


def estimated_data_bytes(cfg: Config, shape: tuple[int, int, int]) -> int:
    """Bytes the data takes where it lives: the resident series (index modes) or every window (standard)."""
    t, n, f = shape
    b = cfg.batching
    if b.mode != "standard":
        return t * n * f * DTYPES[b.dtype].itemsize
    windows = max(0, (t - b.window - b.horizon) // b.stride + 1)
    covariates = 1 + int(cfg.dataset.day_of_week)  # at most; a weekly series has none
    return windows * (b.window * n * (f + covariates) + b.horizon * n) * 4


def make_plan(cfg: Config, env: RankEnv, machine: Machine,
              dataset_shape: Callable[[], tuple[int, int, int]] | None = None) -> Plan:
    """Decide everything once. `dataset_shape` (T, N, F without reading values) is asked only when
    batching.device=auto must weigh the data against the GPU's memory."""
    b, launcher = cfg.batching, cfg.launcher
    notes: list[str] = []
    cuda = machine.gpus > 0 and not launcher.cpu
    if cuda and env.local_rank >= machine.gpus:
        raise UserError(f"gpus: expected at most {machine.gpus} ranks per node (one per GPU), found local rank "
                        f"{env.local_rank}")
    compute = torch.device("cuda", env.local_rank) if cuda else torch.device("cpu")
    backend = None if env.world_size == 1 else ("nccl" if cuda else "gloo")

    time_shard = b.mode == "dist_index" and b.shard == "time" and env.world_size > 1
    shard = "time" if time_shard else ("index" if b.mode == "dist_index" and env.world_size > 1 else "none")
    node_shared = shard == "index" and env.local_world_size > 1

    data_device = torch.device("cpu")
    if b.device == "gpu":
        if not cuda:
            notes.append("batching.device=gpu without a GPU: the data stays in host memory")
        else:
            data_device = compute
    elif b.device == "auto" and cuda and machine.gpu_memory_bytes:
        need = estimated_data_bytes(cfg, dataset_shape()) if dataset_shape else None
        if need is not None and need <= GPU_DATA_SHARE * machine.gpu_memory_bytes:
            data_device = compute
            notes.append(f"data on the GPU ({need / 2**30:.2f} GiB <= {GPU_DATA_SHARE:.0%} of its memory)")
        else:
            notes.append("data in host memory (too large for the GPU, or its size unknown)")
    if data_device.type == "cuda" and node_shared:
        node_shared = False  # each GPU holds its own copy, as asked; host memory holds none
        notes.append("series on each GPU: no node-shared host copy")

    batch_size = b.batch_size
    if batch_size == "auto" and not b.global_batch_size:  # the largest that fits the node (memory.py)
        from stgnn_launch.memory import resolve_auto_batch

        batch_size = resolve_auto_batch(cfg, dataset_shape() if dataset_shape else None, machine, env)
        notes.append(f"batching.batch_size=auto: {batch_size} per rank, the largest up to {b.max_batch_size} that fits")
    global_batch = b.global_batch_size or batch_size * env.world_size
    per_rank = global_batch // env.world_size
    lr = cfg.trainer.lr
    if b.global_batch_size is not None and cfg.trainer.lr_scaling != "none":
        ratio = global_batch / 64  # the reference global batch of the field's protocols
        lr = lr * (ratio if cfg.trainer.lr_scaling == "linear" else math.sqrt(ratio))
        notes.append(f"learning rate {cfg.trainer.lr:g} scaled ({cfg.trainer.lr_scaling}) to {lr:g}")

    threads = cfg.trainer.num_threads or max(1, machine.cores // max(1, env.local_world_size))
    rank, world = (0, 1) if time_shard else (env.rank, env.world_size)
    return Plan(
        mode=b.mode, shard=shard, node_shared=node_shared, compute_device=compute, backend=backend,
        data_device=data_device, series_dtype=DTYPES[b.dtype],
        prefetch=b.prefetch and data_device.type == "cpu", threads=threads,
        batch_size=per_rank, eval_batch_size=b.eval_batch_size or per_rank, global_batch_size=global_batch,
        lr=lr, schedule_rank=rank, schedule_world=world, prep=prepare_spec(cfg),
        dist_timeout_s=60.0 * launcher.dist_timeout_min, notes=notes,
    )


def apply_threads(plan: Plan) -> None:
    """This rank's share of the node's cores, for torch and for the libraries that read OMP_NUM_THREADS."""
    torch.set_num_threads(plan.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(plan.threads))
