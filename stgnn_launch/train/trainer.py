"""The training loop, one rank's view: DDP when the world is larger than one process.

Only rank 0 logs and writes files. Batches come from a `BatchFeed` (gathered ahead in a thread), the
loss is summed on the device and read only at log points (no host synchronisation per step), and each
epoch records where its time went: waiting for data, computing, the gradient all-reduce, evaluation.
Validation and test metrics are reduced as sums of errors and mask counts, so they do not depend on
the world size.
"""

from __future__ import annotations

import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from stgnn_launch.config.schema import Config
from stgnn_launch.data.batching import Batcher, BatchFeed, WindowSource, eval_positions
from stgnn_launch.data.prepare import Prepared
from stgnn_launch.errors import UserError
from stgnn_launch.distributed.context import DistContext, StepVote, all_reduce_sum, barrier
from stgnn_launch.planning.plan import Plan
from stgnn_launch.train import checkpoint
from stgnn_launch.train.metrics import MetricSums, mape_threshold_facts, masked_mae_loss
from stgnn_launch.train.preemption import Preempted, StopRequest
from stgnn_launch.train.runlog import RunLog


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


@dataclass
class EpochStats:
    epoch: int
    train_loss: float
    val_mae: float
    epoch_time_s: float
    samples_per_s: float
    lr: float
    data_wait_s: float  # blocked on the batch feed
    compute_s: float  # forward, backward, optimizer step (the rest of the training loop)
    allreduce_s: float  # gradient all-reduce, launch to done per bucket (CUDA events on GPUs); overlaps backward
    eval_s: float  # validation


class _CommTimer:
    """A DDP communication hook: the default all-reduce, timed from launch to completion per bucket.

    Under NCCL the work runs on the GPU after the host has moved on, so host time would measure the launch
    only: there a pair of CUDA events brackets each bucket's reduction on the stream, and the pairs are
    read (`seconds`) at the epoch's end, when the device is synchronised anyway."""

    def __init__(self, cuda: bool = False) -> None:
        self.host_seconds = 0.0
        self.cuda = cuda
        self.events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    @property
    def seconds(self) -> float:
        if self.events:
            self.events[-1][1].synchronize()
            self.host_seconds += sum(a.elapsed_time(b) for a, b in self.events) / 1000.0
            self.events.clear()
        return self.host_seconds

    def _start(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def _stop(self, started) -> None:
        if not self.cuda:
            self.host_seconds += time.perf_counter() - started
            return
        event = torch.cuda.Event(enable_timing=True)
        event.record()  # on the stream that waits for the reduction
        self.events.append((started, event))

    def hook(self, per_tensor: bool = False):
        """per_tensor: each gradient reduced on its own, so that its sum never depends on where it sits in
        a bucket (a ring all-reduce adds the ranks' values in an order set by the chunk an element falls in,
        and DDP rebuilds its buckets after the first step: a resumed run would round differently at 3+ ranks)."""
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

        def timed_allreduce(state, bucket):  # no annotations: DDP checks them, and ours are strings
            started = self._start()

            def done(fut):
                self._stop(started)
                return fut.value()

            return default_hooks.allreduce_hook(state, bucket).then(done)

        def per_tensor_allreduce(state, bucket):
            started = self._start()
            buffer, offset, works = bucket.buffer(), 0, []
            for grad in bucket.gradients():
                works.append(dist.all_reduce(buffer[offset:offset + grad.numel()], async_op=True))
                offset += grad.numel()
            for work in works:
                work.wait()
            buffer.div_(dist.get_world_size())
            self._stop(started)
            future = torch.futures.Future()
            future.set_result(buffer)
            return future

        return per_tensor_allreduce if per_tensor else timed_allreduce


class Trainer:
    def __init__(self, cfg: Config, plan: Plan, ctx: DistContext, model: nn.Module, prepared: Prepared,
                 source: WindowSource, batcher: Batcher, run_dir: Path, log: RunLog,
                 baselines: dict[str, nn.Module] | None = None, started: float | None = None) -> None:
        """`started`: when this attempt's process began (time.time()), so that checkpoints carry the run's
        wall time over every attempt: a resumed run's cost is not only its last attempt's."""
        self.cfg, self.plan, self.ctx, self.prepared, self.run_dir = cfg, plan, ctx, prepared, run_dir
        self.source, self.batcher, self.log = source, batcher, log
        self.trainer_cfg = cfg.trainer
        self.ckpt_dir = checkpoint.checkpoint_dir(run_dir)
        self.model = model
        self.baselines = baselines or {}
        self.trainable = getattr(model, "trainable", True)
        self.feed = BatchFeed(source, ctx.device, max(plan.batch_size, plan.eval_batch_size), prefetch=plan.prefetch,
                              depth=cfg.batching.prefetch_depth)
        torch.manual_seed(cfg.trainer.seed + ctx.rank)  # dropout and sampling differ per rank
        self.optimizer = self.scheduler = None
        self.network: nn.Module = model
        self.comm = _CommTimer(cuda=ctx.backend == "nccl")
        self.vote = StepVote(ctx)
        if self.trainable:
            self.optimizer = torch.optim.Adam(model.parameters(), lr=plan.lr, eps=cfg.trainer.adam_eps,
                                              weight_decay=cfg.trainer.weight_decay)
            self.scheduler = torch.optim.lr_scheduler.MultiStepLR(
                self.optimizer, milestones=list(cfg.trainer.lr_milestones), gamma=cfg.trainer.lr_gamma)
            if ctx.distributed:
                self.network = DistributedDataParallel(
                    model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
                self.network.register_comm_hook(None, self.comm.hook(per_tensor=cfg.trainer.deterministic))
            if cfg.trainer.compile:
                self.network = torch.compile(self.network)
        self.scaler_mean = prepared.scaler.mean[: prepared.out_features].to(ctx.device)
        self.scaler_std = prepared.scaler.std[: prepared.out_features].to(ctx.device)
        self.history: list[dict[str, Any]] = []
        self.best_val = math.inf
        self.best_epoch = 0
        self.best_model: dict[str, torch.Tensor] | None = None  # the best epoch's weights, on the host
        self.bad_epochs = 0
        self.start_epoch = 1
        self.in_epoch: dict[str, Any] | None = None  # where a step checkpoint left the current epoch
        self.attempt = 1  # 2 and on: resumed from a checkpoint
        self.attempt_started = time.time() if started is None else started
        self.earlier_attempts_s = 0.0  # the wall time of earlier attempts, up to their last checkpoint
        self.stop = StopRequest(cfg.trainer.checkpoint_every_min)

    # ---- one step ----------------------------------------------------------------------------
    def _autocast(self):
        if self.trainer_cfg.bf16 and self.ctx.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def _predict(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        targets = None if y is None else (y - self.scaler_mean) / self.scaler_std
        with self._autocast():
            out = model(x, targets=targets)
        return out.float() * self.scaler_std + self.scaler_mean

    # ---- epochs ------------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> EpochStats:
        self.network.train()
        shards = self.batcher.train_positions(epoch)
        if self.trainer_cfg.max_batches_per_epoch:
            shards = shards[: self.trainer_cfg.max_batches_per_epoch]
        windows = float(sum(p.numel() for p in shards))
        # A step checkpoint of this epoch: skip the steps it covers (the permutation is seed + epoch's).
        done = self.in_epoch if self.in_epoch and self.in_epoch["epoch"] == epoch else {}
        self.in_epoch = None
        first = done.get("step", 0)
        # the saved partial sum is over all ranks: rank 0 carries it, the others restart from 0
        carried = done.get("loss_sum", 0.0) if self.ctx.is_main else 0.0
        loss_sum = torch.tensor(carried, dtype=torch.float64, device=self.ctx.device)
        wait0 = self.feed.wait_s - done.get("data_wait_s", 0.0)
        comm0 = self.comm.seconds - done.get("allreduce_s", 0.0)
        started = time.perf_counter() - done.get("elapsed_s", 0.0)
        bar = tqdm(total=len(shards), initial=first, desc=f"epoch {epoch}", leave=False, mininterval=2.0,
                   disable=not (self.ctx.is_main and self.trainer_cfg.progress and self.log.interactive))
        for step, (x, y) in enumerate(self.feed.batches("train", shards[first:]), start=first + 1):
            pred = self._predict(self.network, x, y)
            loss = masked_mae_loss(pred, y, self.prepared.null_value)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.trainer_cfg.clip_grad_norm > 0:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.trainer_cfg.clip_grad_norm)
            self.optimizer.step()
            loss_sum += loss.detach()
            bar.update()
            if self.log.progress_due():
                self.log.info(f"epoch {epoch}: step {step}/{len(shards)}  train_loss {float(loss_sum) / step:.4f}  "
                              f"{time.perf_counter() - started:.0f}s")
            if step < len(shards):
                self._maybe_stop(epoch, step, loss_sum, {"elapsed_s": time.perf_counter() - started,
                                                         "data_wait_s": self.feed.wait_s - wait0,
                                                         "allreduce_s": self.comm.seconds - comm0})
        self.vote.collect()  # the last step's vote, if one is in flight: nothing stays pending past the loop
        bar.close()
        self.scheduler.step()
        if self.ctx.device.type == "cuda":
            torch.cuda.synchronize(self.ctx.device)  # the epoch ends when the device's queued work does
        elapsed = time.perf_counter() - started
        wait = self.feed.wait_s - wait0
        totals = all_reduce_sum(torch.stack([loss_sum.double(), torch.tensor(float(len(shards)), dtype=torch.float64,
                                                                               device=loss_sum.device),
                                             torch.tensor(windows, dtype=torch.float64, device=loss_sum.device)]),
                                self.ctx).cpu()
        eval_started = time.perf_counter()
        val = self.evaluate("val")
        return EpochStats(epoch=epoch, train_loss=float(totals[0] / max(1.0, float(totals[1]))),
                          val_mae=val["avg"]["mae"], epoch_time_s=elapsed,
                          samples_per_s=float(totals[2]) / elapsed if elapsed > 0 else 0.0,
                          lr=self.optimizer.param_groups[0]["lr"], data_wait_s=wait, compute_s=elapsed - wait,
                          allreduce_s=self.comm.seconds - comm0, eval_s=time.perf_counter() - eval_started)

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

    def _maybe_stop(self, epoch: int, step: int, loss_sum: torch.Tensor, progress: dict[str, float]) -> None:
        """At a step boundary: a step checkpoint when a rank was signalled or one is due; stop if signalled.
        With several ranks the vote cast here is read at the next boundary (StepVote), so every rank acts
        one step after the signal, at the same step."""
        stop, periodic = self.vote.cast(list(self.stop.after_step(epoch, step, self.ctx.is_main)))
        if not (stop or periodic):
            return
        self.vote.collect()  # this step's flags predate the checkpoint below: a signal stays set and votes again
        total = float(all_reduce_sum(loss_sum.detach().clone(), self.ctx))  # every rank's partial sum
        in_epoch = {"epoch": epoch, "step": step, "loss_sum": total, **progress}
        self._save(epoch - 1, improved=False, in_epoch=in_epoch)
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
            self._resume()
        self.log.start_epochs(self.history)
        self.stop.install()
        try:
            self._epochs()
        finally:
            self.stop.uninstall()

    def _epochs(self) -> None:
        budget_s = self.trainer_cfg.budget_s
        for epoch in range(self.start_epoch, self.trainer_cfg.epoch_limit + 1):
            if self.bad_epochs >= self.trainer_cfg.patience or self._budget_spent(budget_s):
                break
            stats = self.train_epoch(epoch)
            check_finite_loss(stats, self.plan.lr)  # before its checkpoint: earlier ones stay as they were
            improved = stats.val_mae < self.best_val
            if improved:
                self.best_val, self.best_epoch, self.bad_epochs = stats.val_mae, epoch, 0
            else:
                self.bad_epochs += 1
            row = vars(stats)
            self.history.append(row)
            self.log.epoch(row)
            self.log.info(f"epoch {epoch}: train_loss {stats.train_loss:.4f}  val_mae {stats.val_mae:.4f}  "
                          f"{stats.epoch_time_s:.1f}s (data wait {stats.data_wait_s:.2f}s)  "
                          f"{stats.samples_per_s:.0f} windows/s" + ("  *best*" if improved else ""))
            self._save(epoch, improved)
            if self.bad_epochs >= self.trainer_cfg.patience:
                self.log.info(f"early stopping: no better validation MAE for {self.bad_epochs} epochs")

    def _budget_spent(self, budget_s: float | None) -> bool:
        """True when one more epoch, as long as the last one, would end past the time budget (the first epoch
        always runs). The same answer on every rank: rank 0's clock decides."""
        if budget_s is None or not self.history:
            return False
        used = self.run_wall_time_s()
        spent = torch.tensor(float(used + self.history[-1]["epoch_time_s"] > budget_s))
        if self.ctx.distributed:
            dist.broadcast(spent, 0, group=self.ctx.control)
        if spent.item():
            self.log.info(f"time budget: stopping after epoch {self.history[-1]['epoch']} ({used / 60:.1f} of "
                          f"{budget_s / 60:g} min used; trainer.time_budget_min)")
        return bool(spent.item())

    def load_best(self, required: bool = False) -> None:
        """The best epoch's weights (by validation MAE); `required` for evaluating a finished run. A run that
        trained holds them itself (from last.pt when resumed); otherwise they are read as last.pt names them."""
        if not self.trainable:
            return
        if self.best_model is not None:
            self.model.load_state_dict(self.best_model)
        elif required or (self.ckpt_dir / checkpoint.BEST).is_file():
            self.model.load_state_dict(checkpoint.best_weights(self.ckpt_dir)[1])

    # ---- checkpoints -------------------------------------------------------------------------
    def _rng_states(self) -> list[dict[str, Any]]:
        """Every rank's random state (dropout and sampling differ per rank), gathered on all ranks."""
        mine = {"cpu": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state(self.ctx.device) if self.ctx.device.type == "cuda" else None}
        if not self.ctx.distributed:
            return [mine]
        states: list[Any] = [None] * self.ctx.world_size
        dist.all_gather_object(states, mine)
        return states

    def _state(self, epoch: int, rng: list[dict[str, Any]], in_epoch: dict[str, Any] | None) -> dict[str, Any]:
        return {
            "epoch": epoch, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "best_val": self.best_val, "best_epoch": self.best_epoch,
            "best_model": self.best_model, "bad_epochs": self.bad_epochs, "history": self.history, "rng_per_rank": rng, "in_epoch": in_epoch,
            "attempt": self.attempt, "run_wall_time_s": self.run_wall_time_s(),
        }

    def run_wall_time_s(self, attempt_s: float | None = None) -> float:
        """Wall time of every attempt so far: earlier ones up to their last checkpoint (work lost after it
        is not counted: it did not count towards the result), this one up to now (or `attempt_s`)."""
        return self.earlier_attempts_s + (time.time() - self.attempt_started if attempt_s is None else attempt_s)

    def _save(self, epoch: int, improved: bool, in_epoch: dict[str, Any] | None = None) -> None:
        """`epoch`: the last finished epoch; `in_epoch`: how far the next one got (a step checkpoint)."""
        rng = self._rng_states()
        if improved:
            self.best_model = checkpoint.cpu_copy(self.model.state_dict())
        if self.ctx.is_main:
            checkpoint.save_pair(self._state(epoch, rng, in_epoch), self.ckpt_dir, improved)
        barrier(self.ctx)

    def _resume(self) -> None:
        path = self.ckpt_dir / checkpoint.LAST
        if not path.is_file():
            self.log.info(f"resume: no checkpoint in {self.ckpt_dir} yet, starting from epoch 1")
            return
        state = checkpoint.load(path)
        checkpoint.load_weights(self.model, state["model"], path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.best_val, self.best_epoch = state["best_val"], state["best_epoch"]
        self.best_model = state.get("best_model")
        if self.ctx.is_main and checkpoint.reconcile_best(self.ckpt_dir, state):
            self.log.info(f"resume: best.pt rewritten as epoch {self.best_epoch}, the best epoch last.pt names")
        self.bad_epochs, self.history = state["bad_epochs"], list(state["history"])
        self.start_epoch = state["epoch"] + 1
        self.in_epoch = state.get("in_epoch")
        self.attempt = state.get("attempt", 1) + 1
        earlier = state.get("run_wall_time_s")
        if earlier is None:  # a checkpoint from before this field: its epochs' own training and validation times
            earlier = sum(row["epoch_time_s"] + row.get("eval_s", 0.0) for row in self.history)
            earlier += (self.in_epoch or {}).get("elapsed_s", 0.0)  # and the part of an epoch a step checkpoint holds
        self.earlier_attempts_s = float(earlier)
        states = state.get("rng_per_rank") or []
        if len(states) == self.ctx.world_size:  # each rank continues its own random stream
            mine = states[self.ctx.rank]
            torch.set_rng_state(mine["cpu"])
            if mine["cuda"] is not None and self.ctx.device.type == "cuda":
                torch.cuda.set_rng_state(mine["cuda"], self.ctx.device)
        elif states:
            self.log.info(f"resume: checkpoint of {len(states)} ranks, now {self.ctx.world_size}: random streams "
                          "restart from the seed")
        where = (f"epoch {self.in_epoch['epoch']} step {self.in_epoch['step']}" if self.in_epoch
                 else f"the end of epoch {state['epoch']}")
        self.log.info(f"resumed from {path} at {where}")


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
    z_scored = (values - prepared.scaler.mean[:f]) / prepared.scaler.std[:f]
    # time-of-day slots exist for sub-daily steps only (the historical average is refused without them)
    # Fitted on the host (its sums: index_add_, which has no deterministic CUDA kernel), whatever the
    # model's device: the same table on every device, and trainer.deterministic holds on GPUs.
    slots = prepared.slots(0, stop) if prepared.has_slots else None
    model.fit(z_scored, observed, slots)
