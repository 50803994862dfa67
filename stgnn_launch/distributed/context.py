"""Process-group setup from the torchrun environment, and the few collectives training needs.

Under torchrun (or a Slurm task that runs it) RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE,
MASTER_ADDR and MASTER_PORT are set; without them this is a single process of world size 1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    device: torch.device
    backend: str | None  # None when not distributed

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    @property
    def node_rank(self) -> int:
        return self.rank // self.local_world_size


def in_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, which Slurm and taskset narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def init_distributed(use_cuda: bool | None = None) -> DistContext:
    """One device per local rank: CUDA with nccl where there are GPUs, else the CPU with gloo."""
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    cuda = torch.cuda.is_available() if use_cuda is None else use_cuda
    if cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
        # Each CPU rank gets its share of the cores, so that ranks do not oversubscribe the node.
        torch.set_num_threads(max(1, usable_cores() // max(1, local_world)))
    backend = None
    if world > 1:
        backend = "nccl" if cuda else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend=backend, store=_attempt_store(rank, world), rank=rank,
                                    world_size=world, device_id=device if cuda else None)
    return DistContext(rank, local_rank, world, local_world, device, backend)


def _attempt_store(rank: int, world: int) -> dist.Store:
    """The torchrun store under a prefix of this restart attempt.

    torchrun keeps one store across --max-restarts; without a fresh prefix, restarted ranks can read
    the dead ranks' addresses and fail to connect ("Connection refused").
    """
    store, _, _ = next(dist.rendezvous("env://", rank, world))
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"stgnn/attempt_{attempt}", store)


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum a tensor over all ranks (in place and returned); identity for one process."""
    if ctx.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def shutdown(ctx: DistContext, together: bool = True) -> None:
    """Leave together after a normal end: a rank tearing its group down while another still talks to it
    can abort. After an error there is no waiting for ranks that may never come."""
    if ctx.distributed and dist.is_initialized():
        if together:
            dist.barrier()
        dist.destroy_process_group()
