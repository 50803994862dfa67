"""Process-group setup from the torchrun environment, and the few collectives training needs.

Under torchrun (or a Slurm task that runs it) RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE,
MASTER_ADDR and MASTER_PORT are set; without them this is a single process of world size 1.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import timedelta

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
    control: object = None  # a gloo group for small host-side votes (stop, checkpoint) that never touch the GPU
    # A gloo group with the long timeout (launcher.dist_timeout_min), for the waits of the setup only: the
    # node's first rank loading the series while the others wait. Training's collectives (the default group,
    # `control`) time out after launcher.collective_timeout_min, so that a dead or hung rank ends the job.
    setup: object = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    @property
    def collective_device(self) -> torch.device:
        """Tensors handed to a collective live here: the GPU under NCCL, the host under gloo."""
        return self.device if self.backend == "nccl" else torch.device("cpu")

    @property
    def node_rank(self) -> int:
        return self.rank // self.local_world_size


def in_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, which Slurm and taskset narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass(frozen=True)
class RankEnv:
    """Where this process stands, from the torchrun environment (one process without it)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1

    @classmethod
    def from_environ(cls) -> "RankEnv":
        world = int(os.environ.get("WORLD_SIZE", 1))
        return cls(rank=int(os.environ.get("RANK", 0)), local_rank=int(os.environ.get("LOCAL_RANK", 0)),
                   world_size=world, local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", world)))


ASYNC_ERROR_ENV = "TORCH_NCCL_ASYNC_ERROR_HANDLING"  # 1: a failed or timed-out NCCL collective ends the process


def init_distributed(env: RankEnv, device: torch.device, backend: str | None, timeout_s: float = 1800.0,
                     collective_timeout_s: float | None = None) -> DistContext:
    """Join the process group (when there is more than one rank) on this rank's device.

    Two timeouts. `timeout_s` covers the longest wait of the setup: the node's first rank loading a large
    series into shared memory while the others wait, on a slow file system; only the gloo `setup` group
    (wait_for_all, any_rank_failed) waits that long. `collective_timeout_s` (default: the same) is the
    default group's, so every training collective's: a rank that died or hangs stops the others after it.
    Under NCCL, asynchronous error handling is on unless the user set it otherwise: a collective that
    fails or times out in NCCL's watchdog takes the process down instead of leaving it waiting."""
    collective_s = timeout_s if collective_timeout_s is None else collective_timeout_s
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if backend == "nccl":
        os.environ.setdefault(ASYNC_ERROR_ENV, "1")  # torchrun sets it for its ranks too; a user's value wins
    if backend is not None and not dist.is_initialized():
        dist.init_process_group(backend=backend, store=_attempt_store(env.rank, env.world_size), rank=env.rank,
                                world_size=env.world_size, timeout=timedelta(seconds=collective_s),
                                device_id=device if backend == "nccl" else None)  # eager NCCL init only
    control = setup = None
    if backend is not None:  # under NCCL, votes on host flags would otherwise need a GPU round trip
        control = dist.new_group(backend="gloo", timeout=timedelta(seconds=collective_s)) if backend == "nccl" \
            else dist.group.WORLD
        setup = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s)) \
            if backend == "nccl" or collective_s != timeout_s else control
    return DistContext(env.rank, env.local_rank, env.world_size, env.local_world_size, device, backend, control,
                       setup)


def _attempt_store(rank: int, world: int) -> dist.Store:
    """The torchrun store under a prefix of this restart attempt.

    torchrun keeps one store across --max-restarts; without a fresh prefix, restarted ranks can read
    the dead ranks' addresses and fail to connect ("Connection refused"). The attempt is counted in the
    store, per rank: every round starts each rank once on every node. TORCHELASTIC_RESTART_COUNT is the
    node's own count, and a node restarted by another's failure (a membership change) does not count it,
    so ranks on two nodes would wait under different prefixes until the process-group timeout.
    """
    store, _, _ = next(dist.rendezvous("env://", rank, world))
    attempt = store.add(f"stgnn/starts/rank_{rank}", 1)
    return dist.PrefixStore(f"stgnn/attempt_{attempt}", store)


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext, *, setup: bool = False) -> torch.Tensor:
    """Sum a tensor over all ranks; identity for one process. The sum is computed on the backend's device
    and returned on the tensor's own device (in place when that is the backend's device). `setup`: a sum
    that waits for every rank's data load, on the host over the `setup` group (the long timeout)."""
    if not ctx.distributed:
        return tensor
    staged = tensor.to("cpu" if setup else ctx.collective_device)
    dist.all_reduce(staged, op=dist.ReduceOp.SUM, group=ctx.setup if setup else None)
    if staged is not tensor:
        tensor.copy_(staged)
    return tensor


class StepVote:
    """The ranks' vote at each step boundary, read one step later: an asynchronous all-reduce (MAX) on the
    host-side control group, so that no rank blocks on the others after every step and the hosts are not
    held in lockstep. Every rank reads the same result at the same step, so all act at the same boundary.
    One process: the flags are its own, at once."""

    def __init__(self, ctx: DistContext) -> None:
        self.ctx = ctx
        self.pending: tuple[object, torch.Tensor] | None = None

    def cast(self, flags: list[bool]) -> list[bool]:
        """Send this step's flags; return the result of the previous step's vote (all False at a first step)."""
        if not self.ctx.distributed:
            return list(flags)
        result = self.collect(len(flags))
        tensor = torch.tensor([1.0 if f else 0.0 for f in flags])
        self.pending = (dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=self.ctx.control, async_op=True),
                        tensor)
        return result

    def collect(self, count: int = 0) -> list[bool]:
        """The pending vote's result (waited for); all False when none is pending. Acting on a result, or
        leaving the loop, collects the pending one so that no collective stays in flight."""
        if self.pending is None:
            return [False] * count
        work, tensor = self.pending
        self.pending = None
        work.wait()
        return [bool(v > 0) for v in tensor.tolist()]


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def wait_for_all(ctx: DistContext) -> None:
    """A barrier for the setup (data loading), with the long timeout, on the host: never the NCCL group."""
    if ctx.distributed:
        dist.barrier(group=ctx.setup)


def any_rank_failed(failed: bool, ctx: DistContext) -> bool:
    """Did any rank fail its part of the setup? Waits as wait_for_all does (gloo, the long timeout)."""
    if not ctx.distributed:
        return failed
    flag = torch.tensor([1.0 if failed else 0.0])
    dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=ctx.setup)
    return bool(flag.item() > 0)


def shutdown(ctx: DistContext, together: bool = True) -> None:
    """Leave together after a normal end: a rank tearing its group down while another still talks to it
    can abort. The others wait there for rank 0's last writes (results, predictions of a large test set),
    so on the setup group, with its long timeout. After an error there is no waiting for ranks that may
    never come."""
    if ctx.distributed and dist.is_initialized():
        if together:
            dist.barrier(group=ctx.setup)
        dist.destroy_process_group()


# What gloo and NCCL say when a collective waits past its timeout; gloo's words depend on where the wait
# was ("Timed out waiting 30000ms for recv", "Application timeout caused pair closure"), often wrapped in a
# comm hook's "Got the following error when running the callback".
_TIMEOUT_WORDS = re.compile(r"timed out|timeout", re.IGNORECASE)


def collective_timeout(err: BaseException, ctx: DistContext, timeout_min: float) -> str | None:
    """One line for a training collective that waited past launcher.collective_timeout_min (a rank hung or
    died), the backend's own words after it; None for any other error."""
    text = str(err)
    if not (ctx.distributed and isinstance(err, (RuntimeError, dist.DistError)) and _TIMEOUT_WORDS.search(text)):
        return None
    said = " ".join(text.split())[:300]
    return (f"a collective timed out: rank {ctx.rank} waited longer than launcher.collective_timeout_min="
            f"{timeout_min:g} min for the other ranks (one of them hung or died; failed_rank names the first "
            f"rank that failed); {ctx.backend} said: {said}")
