"""One rank's whole run: a session (session.py: plan, process group, pipeline, teardown), then training
and test (run_training) or the metrics of a finished run's best checkpoint (run_evaluation).

The pipeline is built in pipeline.py, the record in results.py, what is printed in console.py.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from stgnn_launch import rundir
from stgnn_launch.config.schema import Config
from stgnn_launch.train.console import announce, format_pooled, format_test, run_summary
from stgnn_launch.train.metrics import mape_alarms
from stgnn_launch.train.pipeline import Pipeline, build_pipeline, configure_device, plan_for
from stgnn_launch.train.record import RESULTS, write_json_atomic
from stgnn_launch.train.results import data_bytes_held, make_record, pooled_by_minutes
from stgnn_launch.train.session import rank_session, write_failed

_configure_device = configure_device  # benchmarks/gpu_probe.py's name
# Names read from here before the split (launch/slurm.py: format_test; tests: build_pipeline, data_bytes_held).
__all__ = ["run_training", "run_evaluation", "Pipeline", "build_pipeline", "plan_for", "data_bytes_held",
           "format_test", "format_pooled", "pooled_by_minutes", "write_failed"]


def run_training(cfg: Config, run_dir: Path) -> dict[str, Any]:
    """Train and test on this rank; rank 0 writes results.json. Returns the record as written (every rank).

    A run that fails leaves `failed.json` (the error) beside its config, so that reports show it as failed."""
    with rank_session(cfg, run_dir, training=True) as session:
        announce(session)
        setup_time_s = time.time() - session.started  # process group, data load, split, scaler, windows, model
        trainer = session.trainer()
        trainer.fit()
        trainer.load_best()
        val_sums = trainer.evaluate_sums("val")["model"]
        test_sums = trainer.evaluate_sums("test", with_baselines=True)
        record = make_record(session, trainer, val_sums, test_sums, setup_time_s)
        session.save_predictions(trainer, "test", rundir.predictions(run_dir))
        if session.ctx.is_main:
            write_json_atomic(record.to_dict(), run_dir / RESULTS)
            session.log.info(run_summary(record, session.pipe.facts.mape_threshold_rule, mape_alarms(test_sums),
                                         trainer.trainable, run_dir / RESULTS))
    return record.to_dict()


def run_evaluation(cfg: Config, run_dir: Path, split: str) -> dict[str, Any]:
    """Metrics of the run's best checkpoint on `split` with this world size; rank 0 writes
    eval_<split>_w<world>.json. Errors and masks are summed over ranks, so any world size agrees."""
    with rank_session(cfg, run_dir, training=False) as session:
        cfg, ctx = session.cfg, session.ctx
        trainer = session.trainer()
        if trainer.trainable:
            trainer.load_best(required=True)
        sums = trainer.evaluate_sums(split, with_baselines=True)
        metrics = sums["model"].result()
        baselines = {name: s.result() for name, s in sums.items() if name != "model"}
        record = {"run_dir": str(run_dir), "split": split, "world_size": ctx.world_size, "metrics": metrics,
                  "baselines": baselines, "mape_threshold": cfg.metrics.mape_threshold,
                  "checkpoint": str(rundir.best_checkpoint(run_dir)) if trainer.trainable else None}
        session.save_predictions(trainer, split, rundir.predictions(run_dir, split))
        if ctx.is_main:
            write_json_atomic(record, run_dir / f"eval_{split}_w{ctx.world_size}.json")
            print(format_test(metrics, baselines, cfg.metrics.mape_threshold, session.pipe.facts.mape_threshold_rule,
                              mape_alarms(sums)).replace("test metrics", f"{split} metrics"), flush=True)
    return record
