"""The training loop, one rank's view: DDP when the world is larger than one process.

Checkpoints (last/best, random streams, the position inside an epoch, wall time over attempts) are the
`Checkpointer`'s (checkpointer.py); the Trainer steps, validates, and decides when to stop.

Only rank 0 logs and writes files. Batches come from a `BatchFeed` (gathered ahead in a thread), the
loss is summed on the device and read only at log points (no host synchronisation per step), and each
epoch records where its time went: waiting for data, computing, the gradient all-reduce, evaluation.
Validation and test metrics are reduced as sums of errors and mask counts, so they do not depend on
the world size.
"""

from __future__ import annotations

import inspect
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from stgnn_launch.config.schema import Config
from stgnn_launch.data.batching import BatchFeed, TrainSchedule, WindowSource, eval_positions
from stgnn_launch.data.prepare import Prepared
from stgnn_launch.distributed.context import DistContext, StepVote, all_reduce_sum
from stgnn_launch.errors import UserError
from stgnn_launch.models.residual import moving_buffers
from stgnn_launch.planning.plan import Plan
from stgnn_launch.rundir import EpochStats
from stgnn_launch.train.checkpointer import Checkpointer, Progress
from stgnn_launch.train.comm_timer import CommTimer
from stgnn_launch.train.metrics import MetricSums, mape_threshold_facts, masked_mae_loss
from stgnn_launch.train.preemption import Preempted, StopRequest
from stgnn_launch.train.runlog import RunLog


# DDP's switch for the broadcast of buffers before each forward: `forward_sync_buffers` from torch 2.13
# (`broadcast_buffers` is deprecated there), `broadcast_buffers` before it.
_DDP_ARGS = inspect.signature(DistributedDataParallel).parameters
SYNC_BUFFERS = "forward_sync_buffers" if "forward_sync_buffers" in _DDP_ARGS else "broadcast_buffers"
CUBLAS_WORKSPACE = ":4096:8"  # cuBLAS's deterministic workspace (CUDA >= 10.2): what torch asks for


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seeds every generator; `deterministic`: only deterministic kernels, and an error (not a warning) where
    an operation has none, so that a bitwise resume is either kept or refused, on GPUs as on CPUs."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)  # read when cuBLAS starts a handle
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def wrap_ddp(model: nn.Module, device: torch.device) -> DistributedDataParallel:
    """DDP around `model`, broadcasting buffers before each forward only where training changes them
    (BatchNorm's running statistics): a fitted base's tables would cost a collective per step for nothing."""
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   **{SYNC_BUFFERS: bool(moving_buffers(model))})


@dataclass
class _Tally:
    """An epoch's running totals, continued from where a step checkpoint left it."""

    first: int  # steps already done (a step checkpoint's)
    loss_sum: torch.Tensor  # on the device: read only at log points
    wait0: float  # the feed's wait and the all-reduce time before this epoch (less what a checkpoint carried)
    comm0: float
    started: float  # perf_counter of the epoch's start (earlier by what a checkpoint carried)


class Trainer:
    def __init__(self, cfg: Config, plan: Plan, ctx: DistContext, model: nn.Module, prepared: Prepared,
                 source: WindowSource, batcher: TrainSchedule, run_dir: Path, log: RunLog,
                 baselines: dict[str, nn.Module] | None = None, started: float | None = None) -> None:
        """`started`: when this attempt's process began (time.time()): see Checkpointer."""
        self.cfg, self.plan, self.ctx, self.prepared, self.run_dir = cfg, plan, ctx, prepared, run_dir
        self.source, self.batcher, self.log = source, batcher, log
        self.trainer_cfg = cfg.trainer
        self.model = model
        self.baselines = baselines or {}
        self.trainable = getattr(model, "trainable", True)
        self.feed = BatchFeed(source, ctx.device, max(plan.batch_size, plan.eval_batch_size), prefetch=plan.prefetch,
                              depth=cfg.batching.prefetch_depth)
        torch.manual_seed(cfg.trainer.seed + ctx.rank)  # dropout and sampling differ per rank
        self.optimizer = self.scheduler = None
        self.network: nn.Module = model
        self.comm = CommTimer(cuda=ctx.backend == "nccl")
        self.vote = StepVote(ctx)
        if self.trainable:
            self._build_optimizer()
        self.scaler = prepared.scaler.head(prepared.out_features).to(ctx.device)  # targets and predictions
        self.progress = Progress()
        self.checkpointer = Checkpointer(run_dir, ctx, log, model, self.optimizer, self.scheduler, self.progress,
                                         started)
        self.stop = StopRequest(cfg.trainer.checkpoint_every_min)

    def _build_optimizer(self) -> None:
        cfg, ctx, model = self.cfg, self.ctx, self.model
        self.optimizer = torch.optim.Adam(model.parameters(), lr=self.plan.lr, eps=cfg.trainer.adam_eps,
                                          weight_decay=cfg.trainer.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(
            self.optimizer, milestones=list(cfg.trainer.lr_milestones), gamma=cfg.trainer.lr_gamma)
        if ctx.distributed:
            self.network = wrap_ddp(model, ctx.device)
            self.network.register_comm_hook(None, self.comm.hook(per_tensor=cfg.trainer.deterministic))
        if cfg.trainer.compile:
            self.network = torch.compile(self.network)

    # ---- one step ----------------------------------------------------------------------------
    def _autocast(self):
        if self.trainer_cfg.bf16 and self.ctx.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def _predict(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        targets = None if y is None else self.scaler.transform(y)
        with self._autocast():
            out = model(x, targets=targets)
        return self.scaler.inverse(out.float())

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Forward, backward, optimiser step; the batch's loss, on the device."""
        loss = masked_mae_loss(self._predict(self.network, x, y), y, self.prepared.null_value)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.trainer_cfg.clip_grad_norm > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.trainer_cfg.clip_grad_norm)
        self.optimizer.step()
        return loss.detach()

    # ---- epochs ------------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> EpochStats:
        """The epoch's steps (from a step checkpoint's position when one was taken inside it), then validation."""
        self.network.train()
        shards = self.batcher.train_positions(epoch)
        if self.trainer_cfg.max_batches_per_epoch:
            shards = shards[: self.trainer_cfg.max_batches_per_epoch]
        tally = self._tally(self.progress.take_in_epoch(epoch))
        bar = tqdm(total=len(shards), initial=tally.first, desc=f"epoch {epoch}", leave=False, mininterval=2.0,
                   disable=not (self.ctx.is_main and self.trainer_cfg.progress and self.log.interactive))
        for step, (x, y) in enumerate(self.feed.batches("train", shards[tally.first:]), start=tally.first + 1):
            tally.loss_sum += self._step(x, y)
            bar.update()
            if self.log.progress_due():
                self.log.info(f"epoch {epoch}: step {step}/{len(shards)}  train_loss "
                              f"{float(tally.loss_sum) / step:.4f}  {time.perf_counter() - tally.started:.0f}s")
            if step < len(shards):
                self._maybe_stop(epoch, step, tally)
        self.vote.collect()  # the last step's vote, if one is in flight: nothing stays pending past the loop
        bar.close()
        self.scheduler.step()
        return self._epoch_stats(epoch, shards, tally)

    def _tally(self, done: dict) -> _Tally:
        # the saved partial sum is over all ranks: rank 0 carries it, the others restart from 0
        carried = done.get("loss_sum", 0.0) if self.ctx.is_main else 0.0
        return _Tally(first=done.get("step", 0),
                      loss_sum=torch.tensor(carried, dtype=torch.float64, device=self.ctx.device),
                      wait0=self.feed.wait_s - done.get("data_wait_s", 0.0),
                      comm0=self.comm.seconds - done.get("allreduce_s", 0.0),
                      started=time.perf_counter() - done.get("elapsed_s", 0.0))

    def _in_epoch(self, tally: _Tally) -> dict[str, float]:
        """How far the epoch got, in time: what a step checkpoint carries besides its step and loss sum."""
        return {"elapsed_s": time.perf_counter() - tally.started, "data_wait_s": self.feed.wait_s - tally.wait0,
                "allreduce_s": self.comm.seconds - tally.comm0}

    def _epoch_stats(self, epoch: int, shards: list[torch.Tensor], tally: _Tally) -> EpochStats:
        """The epoch's totals over ranks, then validation."""
        if self.ctx.device.type == "cuda":
            torch.cuda.synchronize(self.ctx.device)  # the epoch ends when the device's queued work does
        elapsed = time.perf_counter() - tally.started
        wait = self.feed.wait_s - tally.wait0
        windows = float(sum(p.numel() for p in shards))
        device = tally.loss_sum.device
        totals = all_reduce_sum(torch.stack([tally.loss_sum.double(),
                                             torch.tensor(float(len(shards)), dtype=torch.float64, device=device),
                                             torch.tensor(windows, dtype=torch.float64, device=device)]),
                                self.ctx).cpu()
        eval_started = time.perf_counter()
        val = self.evaluate("val")
        return EpochStats(epoch=epoch, train_loss=float(totals[0] / max(1.0, float(totals[1]))),
                          val_mae=val["avg"]["mae"], epoch_time_s=elapsed,
                          samples_per_s=float(totals[2]) / elapsed if elapsed > 0 else 0.0,
                          lr=self.optimizer.param_groups[0]["lr"], data_wait_s=wait, compute_s=elapsed - wait,
                          allreduce_s=self.comm.seconds - tally.comm0, eval_s=time.perf_counter() - eval_started)

    @torch.no_grad()
    def evaluate_sums(self, split: str, with_baselines: bool = False) -> dict[str, MetricSums]:
        """Error sums and mask counts on de-normalized values over this rank's windows, then over ranks:
        {"model": ..., and with_baselines each baseline scored on the same windows}."""
        self.model.eval()
        threshold = self.cfg.metrics.mape_threshold
        if threshold is None:  # a Trainer built on the composed config (benchmarks): the runs' own rule
            threshold = mape_threshold_facts(None, self.prepared.scaler, self.prepared.out_features)["mape_threshold"]
        names = ["model"] + (list(self.baselines) if with_baselines else [])
        sums = {name: MetricSums(self.prepared.horizon, self.ctx.device, threshold) for name in names}
        positions = eval_positions(self.source.count(split), self.plan.eval_batch_size, self.plan.schedule_rank,
                                   self.plan.schedule_world)
        positions = positions[: self.trainer_cfg.max_eval_batches]  # None: all (benchmarks cap it)
        for x, y in self.feed.batches(split, positions):
            sums["model"].update(self._predict(self.model, x, None), y, self.prepared.null_value)
            for name in names[1:]:
                sums[name].update(self._predict(self.baselines[name], x, None), y, self.prepared.null_value)
        for s in sums.values():
            all_reduce_sum(s.sums, self.ctx)
        return sums

    def evaluate(self, split: str) -> dict[str, dict[str, float]]:
        """Masked MAE, RMSE and MAPE at horizons 3, 6, 12 and pooled ("avg")."""
        return self.evaluate_sums(split)["model"].result()

    def _maybe_stop(self, epoch: int, step: int, tally: _Tally) -> None:
        """At a step boundary: a step checkpoint when a rank was signalled or one is due; stop if signalled.
        With several ranks the vote cast here is read at the next boundary (StepVote), so every rank acts
        one step after the signal, at the same step."""
        stop, periodic = self.vote.cast(list(self.stop.after_step(epoch, step, self.ctx.is_main)))
        if not (stop or periodic):
            return
        self.vote.collect()  # this step's flags predate the checkpoint below: a signal stays set and votes again
        total = float(all_reduce_sum(tally.loss_sum.detach().clone(), self.ctx))  # every rank's partial sum
        # read only here: the all-reduce timer waits for the device's last reduction (a host sync on NCCL)
        in_epoch = {"epoch": epoch, "step": step, "loss_sum": total, **self._in_epoch(tally)}
        self.checkpointer.save(epoch - 1, improved=False, in_epoch=in_epoch)
        self.stop.checkpointed()
        if stop:
            self.log.info(f"stopping at epoch {epoch} step {step} on a signal: step checkpoint written; a resume "
                          "(or the requeued job) continues from this step")
            raise Preempted(f"preempted at epoch {epoch} step {step}", self.stop.signal)

    def fit(self) -> None:
        """Epochs with early stopping on validation MAE; a checkpoint after every epoch, and at a step
        boundary when the job is signalled (preemption, time limit) or trainer.checkpoint_every_min is due."""
        if not self.trainable:
            return
        if self.trainer_cfg.resume:
            self.checkpointer.resume()
        self.log.start_epochs(self.progress.history)
        self.stop.install()
        try:
            self._epochs()
        finally:
            self.stop.uninstall()

    def _epochs(self) -> None:
        p = self.progress
        budget_s = self.trainer_cfg.budget_s
        for epoch in range(p.start_epoch, self.trainer_cfg.epoch_limit + 1):
            if p.bad_epochs >= self.trainer_cfg.patience or self._budget_spent(budget_s):
                break
            stats = self.train_epoch(epoch)
            check_finite_loss(stats, self.plan.lr)  # before its checkpoint: earlier ones stay as they were
            improved = stats.val_mae < p.best_val
            if improved:
                p.best_val, p.best_epoch, p.bad_epochs = stats.val_mae, epoch, 0
            else:
                p.bad_epochs += 1
            row = stats.to_dict()
            p.history.append(row)
            self.log.epoch(row)
            self.log.info(f"epoch {epoch}: train_loss {stats.train_loss:.4f}  val_mae {stats.val_mae:.4f}  "
                          f"{stats.epoch_time_s:.1f}s (data wait {stats.data_wait_s:.2f}s)  "
                          f"{stats.samples_per_s:.0f} windows/s" + ("  *best*" if improved else ""))
            self.checkpointer.save(epoch, improved)
            if p.bad_epochs >= self.trainer_cfg.patience:
                self.log.info(f"early stopping: no better validation MAE for {p.bad_epochs} epochs")

    def _budget_spent(self, budget_s: float | None) -> bool:
        """True when one more epoch, as long as the last one, would end past the time budget (the first epoch
        always runs). The same answer on every rank: rank 0's clock decides."""
        history = self.progress.history
        if budget_s is None or not history:
            return False
        used = self.checkpointer.run_wall_time_s()
        spent = torch.tensor(float(used + history[-1]["epoch_time_s"] > budget_s))
        if self.ctx.distributed:
            dist.broadcast(spent, 0, group=self.ctx.control)
        if spent.item():
            self.log.info(f"time budget: stopping after epoch {history[-1]['epoch']} ({used / 60:.1f} of "
                          f"{budget_s / 60:g} min used; trainer.time_budget_min)")
        return bool(spent.item())

    def load_best(self, required: bool = False) -> None:
        """The best epoch's weights (by validation MAE); `required` for evaluating a finished run."""
        if self.trainable:
            self.checkpointer.load_best(required)


class TrainingDiverged(UserError):
    """The training loss is NaN or infinite: more epochs cannot recover, so the run stops at once."""


def check_finite_loss(stats: EpochStats, lr: float) -> None:
    if not math.isfinite(stats.train_loss):
        raise TrainingDiverged(f"trainer: expected a finite training loss, found {stats.train_loss} in epoch "
                               f"{stats.epoch} (lr {lr:g}): lower trainer.lr, or check the data's range and the "
                               "graph's weights")


def fit_baseline(model: nn.Module, prepared: Prepared) -> None:
    """Baselines learn their statistics from the training inputs' range, nothing later."""
    stop = int(prepared.starts["train"][-1]) + prepared.window
    f = prepared.out_features
    values = prepared.values[:stop, :, :f].float().cpu()
    from stgnn_launch.train.metrics import observed_mask

    observed = observed_mask(values, prepared.null_value)
    z_scored = prepared.scaler.transform(values, features=f)
    # time-of-day slots exist for sub-daily steps only (the historical average is refused without them)
    # Fitted on the host (its sums: index_add_, which has no deterministic CUDA kernel), whatever the
    # model's device: the same table on every device, and trainer.deterministic holds on GPUs.
    slots = prepared.slots(0, stop) if prepared.has_slots else None
    model.fit(z_scored, observed, slots)
