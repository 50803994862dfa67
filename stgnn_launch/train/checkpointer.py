"""The checkpointing component beside the Trainer: last.pt and best.pt, every rank's random state, how far
an epoch got (a step checkpoint), and the run's wall time over its attempts.

The Trainer owns a `Progress` (what the epochs decided) and hands it, with the model, optimiser and
scheduler, to a `Checkpointer`, which saves and restores them; the file layer is checkpoint.py.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from stgnn_launch.distributed.context import DistContext, barrier
from stgnn_launch.train import checkpoint
from stgnn_launch.train.runlog import RunLog


@dataclass
class Progress:
    """Where training stands, as a checkpoint carries it (besides weights, optimiser and scheduler)."""

    history: list[dict[str, Any]] = field(default_factory=list)  # one EpochStats row per finished epoch
    best_val: float = math.inf
    best_epoch: int = 0
    best_model: dict[str, torch.Tensor] | None = None  # the best epoch's weights, on the host
    bad_epochs: int = 0
    start_epoch: int = 1
    in_epoch: dict[str, Any] | None = None  # where a step checkpoint left the current epoch

    def take_in_epoch(self, epoch: int) -> dict[str, Any]:
        """The step checkpoint's position in `epoch` ({} if none), used once: later epochs start afresh."""
        done = self.in_epoch if self.in_epoch and self.in_epoch["epoch"] == epoch else {}
        self.in_epoch = None
        return done


class Checkpointer:
    def __init__(self, run_dir: Path, ctx: DistContext, log: RunLog, model: nn.Module, optimizer: Any,
                 scheduler: Any, progress: Progress, started: float | None = None) -> None:
        """`started`: when this attempt's process began (time.time()), so that checkpoints carry the run's
        wall time over every attempt: a resumed run's cost is not only its last attempt's."""
        self.ckpt_dir = checkpoint.checkpoint_dir(run_dir)
        self.ctx, self.log, self.model = ctx, log, model
        self.optimizer, self.scheduler, self.progress = optimizer, scheduler, progress
        self.attempt = 1  # 2 and on: resumed from a checkpoint
        self.attempt_started = time.time() if started is None else started
        self.earlier_attempts_s = 0.0  # the wall time of earlier attempts, up to their last checkpoint

    def run_wall_time_s(self, attempt_s: float | None = None) -> float:
        """Wall time of every attempt so far: earlier ones up to their last checkpoint (work lost after it
        is not counted: it did not count towards the result), this one up to now (or `attempt_s`)."""
        return self.earlier_attempts_s + (time.time() - self.attempt_started if attempt_s is None else attempt_s)

    def rng_states(self) -> list[dict[str, Any]]:
        """Every rank's random state (dropout and sampling differ per rank), gathered on all ranks."""
        mine = {"cpu": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state(self.ctx.device) if self.ctx.device.type == "cuda" else None}
        if not self.ctx.distributed:
            return [mine]
        states: list[Any] = [None] * self.ctx.world_size
        dist.all_gather_object(states, mine)
        return states

    def state(self, epoch: int, rng: list[dict[str, Any]], in_epoch: dict[str, Any] | None) -> dict[str, Any]:
        p = self.progress
        return {
            "epoch": epoch, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "best_val": p.best_val, "best_epoch": p.best_epoch,
            "best_model": p.best_model, "bad_epochs": p.bad_epochs, "history": p.history, "rng_per_rank": rng,
            "in_epoch": in_epoch, "attempt": self.attempt, "run_wall_time_s": self.run_wall_time_s(),
        }

    def save(self, epoch: int, improved: bool, in_epoch: dict[str, Any] | None = None) -> None:
        """`epoch`: the last finished epoch; `in_epoch`: how far the next one got (a step checkpoint)."""
        rng = self.rng_states()
        if improved:
            self.progress.best_model = checkpoint.cpu_copy(self.model.state_dict())
        if self.ctx.is_main:
            checkpoint.save_pair(self.state(epoch, rng, in_epoch), self.ckpt_dir, improved)
        barrier(self.ctx)

    def load_best(self, required: bool = False) -> None:
        """The best epoch's weights (by validation MAE); `required` for evaluating a finished run. A run that
        trained holds them itself (from last.pt when resumed); otherwise they are read as last.pt names them."""
        if self.progress.best_model is not None:
            self.model.load_state_dict(self.progress.best_model)
        elif required or (self.ckpt_dir / checkpoint.BEST).is_file():
            self.model.load_state_dict(checkpoint.best_weights(self.ckpt_dir)[1])

    def resume(self) -> None:
        """Weights, optimiser, scheduler, progress, attempt and random streams from last.pt, if there is one."""
        path = self.ckpt_dir / checkpoint.LAST
        if not path.is_file():
            self.log.info(f"resume: no checkpoint in {self.ckpt_dir} yet, starting from epoch 1")
            return
        state = checkpoint.load(path)
        checkpoint.load_weights(self.model, state["model"], path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        p = self.progress
        p.best_val, p.best_epoch, p.best_model = state["best_val"], state["best_epoch"], state.get("best_model")
        if self.ctx.is_main and checkpoint.reconcile_best(self.ckpt_dir, state):
            self.log.info(f"resume: best.pt rewritten as epoch {p.best_epoch}, the best epoch last.pt names")
        p.bad_epochs, p.history = state["bad_epochs"], list(state["history"])
        p.start_epoch, p.in_epoch = state["epoch"] + 1, state.get("in_epoch")
        self.attempt = state.get("attempt", 1) + 1
        self.earlier_attempts_s = self._earlier_attempts_s(state)
        self._restore_rng(state.get("rng_per_rank") or [])
        where = (f"epoch {p.in_epoch['epoch']} step {p.in_epoch['step']}" if p.in_epoch
                 else f"the end of epoch {state['epoch']}")
        self.log.info(f"resumed from {path} at {where}")

    def _earlier_attempts_s(self, state: dict[str, Any]) -> float:
        earlier = state.get("run_wall_time_s")
        if earlier is None:  # a checkpoint from before this field: its epochs' own training and validation times
            earlier = sum(row["epoch_time_s"] + row.get("eval_s", 0.0) for row in self.progress.history)
            earlier += (self.progress.in_epoch or {}).get("elapsed_s", 0.0)  # and a step checkpoint's part epoch
        return float(earlier)

    def _restore_rng(self, states: list[dict[str, Any]]) -> None:
        if len(states) == self.ctx.world_size:  # each rank continues its own random stream
            mine = states[self.ctx.rank]
            torch.set_rng_state(mine["cpu"])
            if mine["cuda"] is not None and self.ctx.device.type == "cuda":
                torch.cuda.set_rng_state(mine["cuda"], self.ctx.device)
        elif states:
            self.log.info(f"resume: checkpoint of {len(states)} ranks, now {self.ctx.world_size}: random streams "
                          "restart from the seed")
