"""The training loop, one rank's view: DDP when the world is larger than one process.

Only rank 0 logs, shows progress and writes files. Validation and test metrics are reduced as sums of
errors and mask counts, so they do not depend on the world size.
"""

from __future__ import annotations

import math
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from stgnn_launch.config.schema import Config
from stgnn_launch.data.batching import Batcher
from stgnn_launch.data.prepare import Prepared
from stgnn_launch.distributed.context import DistContext, all_reduce_sum, barrier
from stgnn_launch.models.registry import ModelSpec, build_model
from stgnn_launch.train import checkpoint
from stgnn_launch.train.metrics import MetricSums, masked_mae_loss, observed_mask


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


@dataclass
class EpochStats:
    epoch: int
    train_loss: float
    val_mae: float
    epoch_time_s: float
    samples_per_s: float
    lr: float


def make_model(cfg: Config, prepared: Prepared, adjacency: np.ndarray, device: torch.device) -> nn.Module:
    """Same initial weights on every rank (same seed); baselines fitted on the training range here,
    before a `standard` run drops the series."""
    seed_everything(cfg.trainer.seed, cfg.trainer.deterministic)
    spec = ModelSpec(
        num_nodes=prepared.values.shape[1], in_features=prepared.in_features, out_features=prepared.out_features,
        window=prepared.window, horizon=prepared.horizon, adjacency=adjacency,
        steps_per_day=prepared.steps_per_day, tod_channel=prepared.tod_channel,
    )
    model = build_model(cfg.model.name, spec, dict(cfg.model.params)).to(device)
    if not getattr(model, "trainable", True):
        fit_baseline(model, prepared, device)
    return model


class Trainer:
    def __init__(self, cfg: Config, ctx: DistContext, model: nn.Module, prepared: Prepared, batcher: Batcher,
                 run_dir: Path) -> None:
        self.cfg, self.ctx, self.prepared, self.batcher, self.run_dir = cfg, ctx, prepared, batcher, run_dir
        self.trainer_cfg = cfg.trainer
        self.ckpt_dir = checkpoint.checkpoint_dir(run_dir)
        self.model = model
        self.trainable = getattr(model, "trainable", True)
        torch.manual_seed(cfg.trainer.seed + ctx.rank)  # dropout and sampling differ per rank
        self.optimizer = self.scheduler = None
        self.network: nn.Module = model
        if self.trainable:
            self.optimizer = torch.optim.Adam(model.parameters(), lr=cfg.trainer.lr,
                                              weight_decay=cfg.trainer.weight_decay)
            self.scheduler = torch.optim.lr_scheduler.MultiStepLR(
                self.optimizer, milestones=list(cfg.trainer.lr_milestones), gamma=cfg.trainer.lr_gamma)
            if ctx.distributed:
                self.network = DistributedDataParallel(
                    model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
        self.scaler_mean = prepared.scaler.mean[: prepared.out_features].to(ctx.device)
        self.scaler_std = prepared.scaler.std[: prepared.out_features].to(ctx.device)
        self.history: list[dict[str, Any]] = []
        self.best_val = math.inf
        self.best_epoch = 0
        self.bad_epochs = 0
        self.start_epoch = 1

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

    def _to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.to(self.ctx.device, non_blocking=True), y.to(self.ctx.device, non_blocking=True)

    # ---- epochs ------------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> EpochStats:
        self.network.train()
        shards = self.batcher.train_positions(epoch)
        if self.trainer_cfg.max_batches_per_epoch:
            shards = shards[: self.trainer_cfg.max_batches_per_epoch]
        loss_sum = torch.zeros(2, dtype=torch.float64)  # sum of batch losses, number of windows seen
        started = time.perf_counter()
        bar = tqdm(shards, desc=f"epoch {epoch}", leave=False, mininterval=2.0,
                   disable=not (self.ctx.is_main and self.trainer_cfg.progress and sys.stderr.isatty()))
        for positions in bar:
            x, y = self._to_device(*self.batcher.source.take("train", positions))
            pred = self._predict(self.network, x, y)
            loss = masked_mae_loss(pred, y, self.prepared.null_value)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.trainer_cfg.clip_grad_norm > 0:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.trainer_cfg.clip_grad_norm)
            self.optimizer.step()
            loss_sum += torch.tensor([loss.item(), positions.numel()], dtype=torch.float64)
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        self.scheduler.step()
        steps = torch.tensor([float(len(shards))], dtype=torch.float64)
        totals = all_reduce_sum(torch.cat([loss_sum, steps]).to(self._reduce_device), self.ctx).cpu()
        elapsed = time.perf_counter() - started
        val = self.evaluate("val")
        return EpochStats(epoch=epoch, train_loss=float(totals[0] / max(1.0, float(totals[2]))),
                          val_mae=val["avg"]["mae"], epoch_time_s=elapsed,
                          samples_per_s=float(totals[1]) / elapsed if elapsed > 0 else 0.0,
                          lr=self.optimizer.param_groups[0]["lr"])

    @property
    def _reduce_device(self) -> torch.device:
        return self.ctx.device if self.ctx.backend == "nccl" else torch.device("cpu")

    @torch.no_grad()
    def evaluate_sums(self, split: str) -> MetricSums:
        """Error sums and mask counts on de-normalized values over this rank's windows, then over ranks."""
        self.model.eval()
        sums = MetricSums(self.prepared.horizon, self._reduce_device)
        for x, y in self.batcher.eval_batches(split):
            x, y = self._to_device(x, y)
            sums.update(self._predict(self.model, x, None), y, self.prepared.null_value)
        all_reduce_sum(sums.sums, self.ctx)
        return sums

    def evaluate(self, split: str) -> dict[str, dict[str, float]]:
        """Masked MAE, RMSE and MAPE at horizons 3, 6, 12 and pooled ("avg")."""
        return self.evaluate_sums(split).result()

    def fit(self) -> None:
        """Epochs with early stopping on validation MAE; a checkpoint after every epoch."""
        if not self.trainable:
            return
        if self.trainer_cfg.resume:
            self._resume()
        for epoch in range(self.start_epoch, self.trainer_cfg.max_epochs + 1):
            if self.bad_epochs >= self.trainer_cfg.patience:
                break
            stats = self.train_epoch(epoch)
            improved = stats.val_mae < self.best_val
            if improved:
                self.best_val, self.best_epoch, self.bad_epochs = stats.val_mae, epoch, 0
            else:
                self.bad_epochs += 1
            self.history.append(vars(stats))
            self._log(f"epoch {epoch}: train_loss {stats.train_loss:.4f}  val_mae {stats.val_mae:.4f}  "
                      f"{stats.epoch_time_s:.1f}s  {stats.samples_per_s:.0f} windows/s"
                      + ("  *best*" if improved else ""))
            self._save(epoch, improved)
            if self.bad_epochs >= self.trainer_cfg.patience:
                self._log(f"early stopping: no better validation MAE for {self.bad_epochs} epochs")

    def load_best(self, required: bool = False) -> None:
        """The best epoch's weights (by validation MAE); `required` for evaluating a finished run."""
        best = self.ckpt_dir / checkpoint.BEST
        if self.trainable and (required or best.is_file()):
            self.model.load_state_dict(checkpoint.load(best)["model"])

    # ---- checkpoints -------------------------------------------------------------------------
    def _state(self, epoch: int) -> dict[str, Any]:
        return {
            "epoch": epoch, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "best_val": self.best_val, "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs, "history": self.history, "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def _save(self, epoch: int, improved: bool) -> None:
        if self.ctx.is_main:
            state = self._state(epoch)
            checkpoint.save_atomic(state, self.ckpt_dir / checkpoint.LAST)
            if improved:
                checkpoint.save_atomic({"epoch": epoch, "model": state["model"]}, self.ckpt_dir / checkpoint.BEST)
        barrier(self.ctx)

    def _resume(self) -> None:
        path = self.ckpt_dir / checkpoint.LAST
        if not path.is_file():
            self._log(f"resume: no checkpoint in {self.ckpt_dir} yet, starting from epoch 1")
            return
        state = checkpoint.load(path)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.best_val, self.best_epoch = state["best_val"], state["best_epoch"]
        self.bad_epochs, self.history = state["bad_epochs"], list(state["history"])
        self.start_epoch = state["epoch"] + 1
        torch.set_rng_state(state["rng_cpu"])
        if state["rng_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        self._log(f"resumed from {path} after epoch {state['epoch']}")

    def _log(self, message: str) -> None:
        if self.ctx.is_main:
            print(message, flush=True)


def fit_baseline(model: nn.Module, prepared: Prepared, device: torch.device) -> None:
    """Baselines learn their statistics from the training inputs' range, nothing later."""
    stop = int(prepared.starts["train"][-1]) + prepared.window
    f = prepared.out_features
    values = prepared.values[:stop, :, :f].cpu()
    observed = observed_mask(values, prepared.null_value)
    z_scored = (values - prepared.scaler.mean[:f]) / prepared.scaler.std[:f]
    model.fit(z_scored.to(device), observed.to(device), prepared.slots(0, stop).to(device))
