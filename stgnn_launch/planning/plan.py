"""One plan per rank, decided once from the config and the machine, that every later step reads.

The Layout (layout.py: shard, node sharing, devices, resident precision) and the batch size are decided by
one function each; this module adds what follows from them (prefetching, threads, the learning rate) and
nothing is worked out again downstream: the data path, the trainer and the record only read the plan.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Callable

import torch

from stgnn_launch.config.schema import Config, LrScaling
from stgnn_launch.data.prepare import PrepareSpec
from stgnn_launch.distributed.context import RankEnv
from stgnn_launch.planning.fit import resolve_auto_batch
from stgnn_launch.planning.layout import Layout, decide_layout, prepare_spec
from stgnn_launch.planning.machine import Machine


@dataclass(frozen=True)
class Plan:
    layout: Layout
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

    # the Layout's decisions, read as the plan's own
    mode = property(lambda self: self.layout.mode)
    shard = property(lambda self: self.layout.shard)
    node_shared = property(lambda self: self.layout.node_shared)
    compute_device = property(lambda self: self.layout.compute_device)
    backend = property(lambda self: self.layout.backend)
    data_device = property(lambda self: self.layout.data_device)
    series_dtype = property(lambda self: self.layout.series_dtype)

    @property
    def data_on_gpu(self) -> bool:
        return self.layout.data_on_gpu


def decide_batch_size(cfg: Config, env: RankEnv, machine: Machine,
                      dataset_shape: Callable[[], tuple[int, int, int]] | None) -> tuple[int, int, str | None]:
    """(per rank, global, a note): a global batch's share, the configured number, or auto (a single process
    only: stgnn-train writes the number into config.yaml for every rank)."""
    b = cfg.batching
    if b.global_batch_size:
        return b.global_batch_size // env.world_size, b.global_batch_size, None
    note = None
    size = b.batch_size
    if size == "auto":
        size = resolve_auto_batch(cfg, dataset_shape() if dataset_shape else None, machine, env.world_size)
        note = f"batching.batch_size=auto: {size} per rank, the largest up to {b.max_batch_size} that fits"
    return int(size), int(size) * env.world_size, note


def make_plan(cfg: Config, env: RankEnv, machine: Machine,
              dataset_shape: Callable[[], tuple[int, int, int]] | None = None) -> Plan:
    """Decide everything once. `dataset_shape` (T, N, F without reading values) is asked only when
    batching.device=auto must weigh the data against the GPU's memory, or a single process sizes `auto`."""
    layout = decide_layout(cfg, env, machine, dataset_shape)
    notes = list(layout.notes)
    per_rank, global_batch, note = decide_batch_size(cfg, env, machine, dataset_shape)
    if note:
        notes.append(note)
    lr = cfg.trainer.lr
    if cfg.batching.global_batch_size is not None and cfg.trainer.lr_scaling != LrScaling.none:
        ratio = global_batch / 64  # the reference global batch of the field's protocols
        lr = lr * (ratio if cfg.trainer.lr_scaling == LrScaling.linear else math.sqrt(ratio))
        notes.append(f"learning rate {cfg.trainer.lr:g} scaled ({cfg.trainer.lr_scaling}) to {lr:g}")
    ranks_sharing_cores = max(1, env.local_world_size)
    threads = cfg.trainer.num_threads or max(1, machine.cores // ranks_sharing_cores)
    rank, world = (0, 1) if layout.shard == "time" else (env.rank, env.world_size)
    return Plan(layout=layout, prefetch=cfg.batching.prefetch and not layout.data_on_gpu, threads=threads,
                batch_size=per_rank, eval_batch_size=cfg.batching.eval_batch_size or per_rank,
                global_batch_size=global_batch, lr=lr, schedule_rank=rank, schedule_world=world,
                prep=prepare_spec(cfg), dist_timeout_s=60.0 * cfg.launcher.dist_timeout_min, notes=notes)


def apply_threads(plan: Plan) -> None:
    """This rank's share of the node's cores, for torch and for the libraries that read OMP_NUM_THREADS."""
    torch.set_num_threads(plan.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(plan.threads))
