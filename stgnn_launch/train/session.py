"""One rank's session, shared by training and evaluation: plan, process group, run lock, log, pipeline,
and their teardown, whichever way the work inside ends."""

from __future__ import annotations

import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from stgnn_launch import run_lock
from stgnn_launch.config.schema import Config
from stgnn_launch.distributed.context import (DistContext, collective_timeout, init_distributed, shutdown,
                                              wait_for_all)
from stgnn_launch.planning.plan import Plan
from stgnn_launch.train.pipeline import Pipeline, build_pipeline, configure_device, plan_for, with_mape_threshold
from stgnn_launch.train.preemption import Preempted
from stgnn_launch.train.record import FAILED, clear_outcome, write_json_atomic
from stgnn_launch.train.runlog import RunLog
from stgnn_launch.train.trainer import Trainer


@dataclass
class Session:
    cfg: Config  # with the MAPE threshold the metrics use (decided by the pipeline)
    plan: Plan
    ctx: DistContext
    pipe: Pipeline
    log: RunLog
    run_dir: Path
    started: float  # time.time() as the session began: the attempt's wall time starts here

    def trainer(self) -> Trainer:
        return Trainer(self.cfg, self.plan, self.ctx, self.pipe.model, self.pipe.prepared, self.pipe.source,
                       self.pipe.batcher, self.run_dir, self.log, self.pipe.baselines, started=self.started)

    def save_predictions(self, trainer: Trainer, split: str, path: Path) -> None:
        if self.cfg.trainer.save_predictions:
            from stgnn_launch.train.predictions import save_predictions

            save_predictions(trainer, split, path)


@contextmanager
def rank_session(cfg: Config, run_dir: Path, *, training: bool) -> Iterator[Session]:
    """`training`: a new attempt (its outcome files cleared, failed.json on an error, the trainer's log
    settings); otherwise an evaluation, which reads the run and writes beside it (it holds the lock too)."""
    started = time.time()
    plan, env = plan_for(cfg)
    configure_device(cfg, plan)
    ctx = init_distributed(env, plan.compute_device, plan.backend, plan.dist_timeout_s,
                           60.0 * cfg.launcher.collective_timeout_min)
    locked_here = ctx.is_main and run_lock.hold(run_dir)  # refused before anything is written (a Slurm job)
    if training and ctx.is_main:
        clear_outcome(run_dir)
    log = (RunLog(run_dir, ctx.is_main, cfg.trainer.tensorboard, cfg.trainer.log_every_s) if training
           else RunLog(run_dir, ctx.is_main))
    try:
        pipe = build_pipeline(cfg, plan, ctx)
        wait_for_all(ctx)  # every rank's data is loaded (long timeout); training's collectives have the short one
        yield Session(with_mape_threshold(cfg, pipe), plan, ctx, pipe, log, run_dir, started)
        shutdown(ctx)
    except BaseException as err:
        if training and ctx.is_main and not isinstance(err, (SystemExit, Preempted)):
            write_failed(run_dir, err, collective_timeout(err, ctx, cfg.launcher.collective_timeout_min))
        raise
    finally:
        log.close()
        shutdown(ctx, together=False)  # no-op after the normal end
        if locked_here:
            run_lock.release(run_dir)


def write_failed(run_dir: Path, err: BaseException, message: str | None = None) -> None:
    """failed.json with the error (`message`, where the caller can say what it means, else its text); on a disk
    too full even for that, the error alone (no traceback), and if that fails too, one line on stderr: the
    run's own error is what the user must see."""
    record = {"error": message or str(err) or type(err).__name__, "type": type(err).__name__,
              "traceback": traceback.format_exc(), "time": time.time()}
    for attempt in (record, {k: v for k, v in record.items() if k != "traceback"}):
        try:
            write_json_atomic(attempt, run_dir / FAILED)
            return
        except OSError as write_err:
            reason = write_err.strerror or str(write_err)
    print(f"stgnn-train: warning: could not write {run_dir / FAILED} ({reason})", file=sys.stderr, flush=True)
