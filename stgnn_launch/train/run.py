"""One rank's whole run: plan -> data -> split and scaler -> windows -> model -> train -> test -> record.

The plan (stgnn_launch/planning/) is decided once, here, and every step below only reads it.
"""

from __future__ import annotations

import socket
import sys
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from stgnn_launch.config.schema import Config
from stgnn_launch.data.batching import Batcher, WindowSource, build_source
from stgnn_launch.data.datasets import dataset_shape, load_dataset
from stgnn_launch.data.prepare import Prepared, fill_missing, input_ranges, prepare, scaler_from_sums
from stgnn_launch.data.prepare.checks import graph_warnings, sensor_warnings
from stgnn_launch.data.prepare.missing import count_missing
from stgnn_launch.data.graph import SparseGraph
from stgnn_launch.data.series import Series
from stgnn_launch.data.summary import format_step
from stgnn_launch.distributed.context import DistContext, RankEnv, init_distributed, shutdown, wait_for_all
from stgnn_launch import run_lock
from stgnn_launch.errors import UserError
from stgnn_launch.models.checkpointing import enable_activation_checkpointing
from stgnn_launch.models.registry import ModelSpec, build_model, model_class
from stgnn_launch.models.residual import with_base
from stgnn_launch.planning.estimate import SIDE_BASELINE_READINGS
from stgnn_launch.planning.machine import Machine
from stgnn_launch.planning.plan import Plan, apply_threads, make_plan
from stgnn_launch.train.metrics import MetricSums, mape_alarms, mape_threshold_facts
from stgnn_launch.train.preemption import Preempted
from stgnn_launch.train.record import FAILED, RESULTS, clear_outcome, git_sha, peak_rss_bytes, write_json_atomic
from stgnn_launch.train.runlog import RunLog, base_note, epochs_line, missing_line, model_label, startup_block
from stgnn_launch.train.trainer import Trainer, fit_baseline, seed_everything
from stgnn_launch import rundir


@dataclass
class Pipeline:
    """Everything a Trainer needs, built in the order of the data path."""

    prepared: Prepared
    source: WindowSource
    batcher: Batcher
    model: nn.Module
    baselines: dict[str, nn.Module]
    facts: dict[str, Any]


def plan_for(cfg: Config) -> tuple[Plan, RankEnv]:
    env = RankEnv.from_environ()
    machine = Machine.detect(cpu_only=bool(cfg.launcher.cpu))
    return make_plan(cfg, env, machine, lambda: dataset_shape(cfg.dataset)), env


def load_prepared(cfg: Config, plan: Plan, ctx: DistContext) -> tuple[Prepared, Series, int | None, int]:
    """This rank's Prepared, its Series (graph, facts), the training batches per epoch when time-sharded,
    and how many non-finite readings were rewritten as missing."""
    if plan.shard == "time":  # this rank's steps only; its own windows, shuffled among themselves
        from stgnn_launch.distributed.time_shard import load_time_shard

        return load_time_shard(cfg.dataset, plan.prep, ctx, plan.batch_size, plan.series_dtype)
    if plan.node_shared:  # read, filled and summed once per node; every rank maps the same pages
        from stgnn_launch.distributed.shared_series import load_node_shared

        series, stats = load_node_shared(cfg.dataset, plan.prep, plan.series_dtype, ctx, cfg.run_dir)
        return prepare(series, plan.prep, scaler=scaler_from_sums(stats.scaler_sums)), series, None, stats.filled
    series = load_dataset(cfg.dataset)
    filled = fill_missing(series.values, plan.prep.null_value)
    if plan.series_dtype != series.values.dtype:  # the resident precision, before the scaler sees it
        series.values = series.values.to(plan.series_dtype)
    return prepare(series, plan.prep), series, None, filled


def with_mape_threshold(cfg: Config, pipe: Pipeline) -> Config:
    """cfg with the threshold the metrics use (decided in build_pipeline); the caller's cfg is left alone."""
    return replace(cfg, metrics=replace(cfg.metrics, mape_threshold=pipe.facts["mape_threshold"]))


def model_spec(prepared: Prepared, graph: SparseGraph) -> ModelSpec:
    return ModelSpec(num_nodes=prepared.values.shape[1], in_features=prepared.in_features,
                     out_features=prepared.out_features, window=prepared.window, horizon=prepared.horizon,
                     graph=graph, steps_per_day=prepared.steps_per_day, tod_channel=prepared.tod_channel)


def _train_readings(prepared: Prepared) -> int:
    return prepared.values[:int(prepared.starts["train"][-1]) + prepared.window].numel()


def build_baselines(cfg: Config, plan: Plan, prepared: Prepared, spec: ModelSpec,
                    device: torch.device) -> dict[str, nn.Module]:
    """Persistence always, and the historical average where the step has time-of-day slots, scored on the
    same test windows as the model (so a run tells at once whether its model learned anything)."""
    from stgnn_launch.models.baselines import HistoricalAverage, Persistence

    baselines: dict[str, nn.Module] = {}
    if cfg.model.name != "persistence":
        baselines["persistence"] = Persistence(spec).to(device)
    # Its fit is a pass with full-size temporaries over the training range: beside the model only where that
    # stays small (a year of PeMS would add GBs per rank); model=historical_average itself always fits.
    small = _train_readings(prepared) <= SIDE_BASELINE_READINGS
    if prepared.has_slots and small and plan.shard != "time" and cfg.model.name != "historical_average":
        average = HistoricalAverage(spec).to(device)
        fit_baseline(average, prepared)
        baselines["historical_average"] = average
    return baselines


def build_pipeline(cfg: Config, plan: Plan, ctx: DistContext) -> Pipeline:
    prepared, series, steps_per_epoch, filled = load_prepared(cfg, plan, ctx)
    facts = {"name": cfg.dataset.name, "num_steps": series.num_steps, "num_nodes": series.num_nodes,
             "num_features": series.num_features, "start": str(series.timestamps[0]),
             "step": format_step(series.step),
             "step_s": float(series.step / np.timedelta64(1, "s")), "time_shard": plan.shard == "time", "node_shared": plan.node_shared,
             "filled_readings": filled, "series_bytes": series.nbytes,
             "warnings": sensor_warnings(prepared.values, series.sensor_ids, series.feature_names,
                                         input_ranges(prepared.starts["train"], prepared.window),
                                         prepared.null_value)
                         + graph_warnings(series.graph, series.sensor_ids) if ctx.is_main else [],
             "windows": {split: len(starts) for split, starts in prepared.starts.items()},
             "missing_readings": count_missing(prepared.values, prepared.null_value) if ctx.is_main else None,
             "readings": prepared.values.numel(),
             **mape_threshold_facts(cfg.metrics.mape_threshold, prepared.scaler, prepared.out_features)}
    graph = series.graph
    del series
    spec = model_spec(prepared, graph)
    if getattr(model_class(cfg.model.name), "needs_slots", False) and not prepared.has_slots:
        raise UserError(f"model={cfg.model.name}: expected a series whose step divides a day, with the time-of-day "
                        f"covariate (dataset.covariates), found a step of {facts['step']}")
    seed_everything(cfg.trainer.seed, cfg.trainer.deterministic)  # same initial weights on every rank
    model = build_model(cfg.model.name, spec, dict(cfg.model.params))
    enable_activation_checkpointing(model, cfg.trainer.activation_checkpointing)  # read by the models' steps
    model = with_base(model, cfg.model.base, spec, prepared.has_slots,
                      plan.shard != "time" and _train_readings(prepared) <= SIDE_BASELINE_READINGS).to(plan.compute_device)
    if not getattr(model, "trainable", True) or getattr(model, "fits_on_train", False):
        fit_baseline(model, prepared)
    baselines = build_baselines(cfg, plan, prepared, spec, plan.compute_device)
    source = build_source(plan.mode, prepared, plan.data_device, plan.compute_device)
    # The field's pipeline keeps only the materialized windows (standard); a series on the GPU needs no host
    # copy (a node-shared one stays mapped once per node, for the node's other ranks): drop this rank's view.
    if plan.mode == "standard" or plan.data_on_gpu:
        prepared = prepared.with_values(torch.empty((0,) + tuple(prepared.values.shape[1:]),
                                                    dtype=prepared.values.dtype))
    batcher = Batcher(source.count("train"), batch_size=plan.batch_size, shuffle=cfg.batching.shuffle,
                      seed=cfg.trainer.seed, rank=plan.schedule_rank, world=plan.schedule_world,
                      max_train_batches=steps_per_epoch)
    return Pipeline(prepared, source, batcher, model, baselines, facts)


def _configure_device(cfg: Config, plan: Plan) -> None:
    apply_threads(plan)
    if plan.compute_device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = cfg.trainer.tf32
        torch.backends.cudnn.allow_tf32 = cfg.trainer.tf32


def data_bytes_held(plan: Plan, ctx: DistContext, pipe: Pipeline) -> dict[str, int]:
    """Data (series or windows, covariates) really held, host and device apart, per rank and per node: a
    node-shared host copy counts once per node (also where each GPU holds its own copy made from it)."""
    held = pipe.source.data_bytes
    shared = getattr(pipe.source, "series_bytes", 0) if plan.node_shared else 0
    device = held if plan.data_on_gpu else 0
    host = 0 if plan.data_on_gpu else held - shared
    ranks = ctx.local_world_size
    return {"host_data_bytes_per_rank": host, "host_data_bytes_per_node": ranks * host + shared,
            "device_data_bytes_per_rank": device, "device_data_bytes_per_node": ranks * device}


def device_peaks(ctx: DistContext) -> dict[str, int | None]:
    """This rank's GPU memory peaks (the caching allocator's), beside the host's peak RSS."""
    cuda = ctx.device.type == "cuda"
    return {"device_peak_allocated_bytes": torch.cuda.max_memory_allocated(ctx.device) if cuda else None,
            "device_peak_reserved_bytes": torch.cuda.max_memory_reserved(ctx.device) if cuda else None}


def series_bytes(plan: Plan, ctx: DistContext, pipe: Pipeline) -> tuple[int, int]:
    """(per rank, per node) bytes of series held in host memory, or on the GPU when it lives there:
    a node-shared copy counts once per node and nothing per rank."""
    held = getattr(pipe.source, "series_bytes", 0)
    if plan.node_shared:
        return 0, held
    return held, held * ctx.local_world_size


def startup_facts(cfg: Config, plan: Plan, ctx: DistContext, pipe: Pipeline, run_dir: Path) -> dict[str, Any]:
    f = pipe.facts
    params = sum(p.numel() for p in pipe.model.parameters())
    where = f"{plan.data_device}" + (" (node-shared)" if plan.node_shared else "")
    facts = {
        "dataset": f"{f['name']}: {f['num_steps']} steps x {f['num_nodes']} nodes x {f['num_features']} features, "
                   f"step {f['step']}" + (" (this rank's time range)" if f["time_shard"] else ""),
        "windows": ", ".join(f"{k} {v}" for k, v in f["windows"].items()),
        "missing": missing_line(f, pipe.prepared.null_value),
        "MAPE over": f"|y| > {f['mape_threshold']:g} ({f['mape_threshold_rule']})",
        "model": f"{model_label(cfg.model)}, {params:,} parameters" + base_note(pipe.model),
        "epochs": epochs_line(cfg.trainer),
        "batching": f"{plan.mode}, data on {where} as {str(plan.series_dtype).replace('torch.', '')}, "
                    f"prefetch {'on' if plan.prefetch else 'off'}",
        "ranks": f"{ctx.world_size} ({ctx.backend or 'single process'}), compute on {plan.compute_device}, "
                 f"{plan.threads} threads each",
        "batch": f"{plan.batch_size} per rank, {plan.global_batch_size} global, lr {plan.lr:g}",
        "data bytes": f"{pipe.source.data_bytes / 2**20:.1f} MiB per rank",
        "run dir": str(run_dir),
    }
    cached = converted_cache(cfg)
    if cached:
        facts["cache"] = cached
    for i, note in enumerate(plan.notes):
        facts[f"note {i + 1}"] = note
    return facts


def converted_cache(cfg: Config) -> str | None:
    """Which cache entry a CSV/NPY/NPZ dataset was read from, and whether it was converted by this run."""
    from stgnn_launch.data.readers import CACHE_USED

    if not cfg.dataset.path:
        return None
    used = CACHE_USED.get(str(Path(cfg.dataset.path).expanduser().resolve()))
    return f"{used[0]} ({used[1]}, keyed by the file's content)" if used else None


def run_training(cfg: Config, run_dir: Path) -> dict[str, Any]:
    """Train and test on this rank; rank 0 writes results.json and returns the record.

    A run that fails leaves `failed.json` (the error) beside its config, so that reports show it as failed."""
    started = time.time()
    plan, env = plan_for(cfg)
    _configure_device(cfg, plan)
    ctx = init_distributed(env, plan.compute_device, plan.backend, plan.dist_timeout_s,
                           60.0 * cfg.launcher.collective_timeout_min)
    locked_here = ctx.is_main and run_lock.hold(run_dir)  # refused before anything is written (a Slurm job)
    if ctx.is_main:
        clear_outcome(run_dir)
    log = RunLog(run_dir, ctx.is_main, cfg.trainer.tensorboard, cfg.trainer.log_every_s)
    try:
        pipe = build_pipeline(cfg, plan, ctx)
        wait_for_all(ctx)  # every rank's data is loaded (long timeout); training's collectives have the short one
        cfg = with_mape_threshold(cfg, pipe)
        log.info(startup_block(startup_facts(cfg, plan, ctx, pipe, run_dir)))
        if pipe.facts["filled_readings"]:
            log.info(f"warning: dataset {cfg.dataset.name}: {pipe.facts['filled_readings']} readings were NaN or "
                     "infinite; they are treated as missing (masked in the loss and the metrics)")
        for warning in pipe.facts["warnings"]:
            log.info(f"warning: dataset {cfg.dataset.name}: {warning}")
        setup_time_s = time.time() - started  # process group, data load, split, scaler, windows, model
        trainer = Trainer(cfg, plan, ctx, pipe.model, pipe.prepared, pipe.source, pipe.batcher, run_dir, log,
                          pipe.baselines, started=started)
        trainer.fit()
        trainer.load_best()
        val_sums = trainer.evaluate_sums("val")["model"]
        test_all = trainer.evaluate_sums("test", with_baselines=True)
        test = test_all["model"].result()
        baselines = {name: s.result() for name, s in test_all.items() if name != "model"}
        record = make_record(cfg, plan, ctx, pipe, trainer, val_sums, test_all["model"], baselines,
                             setup_time_s, started)
        if cfg.trainer.save_predictions:
            from stgnn_launch.train.predictions import save_predictions

            save_predictions(trainer, "test", rundir.predictions(run_dir))
        if ctx.is_main:
            write_json_atomic(record, run_dir / RESULTS)
            log.info(format_test(test, baselines, cfg.metrics.mape_threshold, pipe.facts["mape_threshold_rule"],
                                 mape_alarms(test_all)))
            if cfg.trainer.pooled_steps:
                log.info(format_pooled(record["test_pooled"]))
            if record.get("beats_persistence") is False and trainer.trainable:  # a baseline cannot train longer
                log.info(f"warning: {cfg.model.name} did not beat persistence on the test windows (MAE "
                         f"{test['avg']['mae']:.4f} vs {baselines['persistence']['avg']['mae']:.4f}): train longer, "
                         "or try another learning rate")
            log.info(f"results: {run_dir / RESULTS}")
        shutdown(ctx)
        return record
    except BaseException as err:
        if ctx.is_main and not isinstance(err, (SystemExit, Preempted)):
            write_failed(run_dir, err)
        raise
    finally:
        log.close()
        shutdown(ctx, together=False)  # no-op after the normal end
        if locked_here:
            run_lock.release(run_dir)


def write_failed(run_dir: Path, err: BaseException) -> None:
    """failed.json with the error; on a disk too full even for that, the error alone (no traceback), and
    if that fails too, one line on stderr: the run's own error is what the user must see."""
    record = {"error": str(err) or type(err).__name__, "type": type(err).__name__,
              "traceback": traceback.format_exc(), "time": time.time()}
    for attempt in (record, {k: v for k, v in record.items() if k != "traceback"}):
        try:
            write_json_atomic(attempt, run_dir / FAILED)
            return
        except OSError as write_err:
            reason = write_err.strerror or str(write_err)
    print(f"stgnn-train: warning: could not write {run_dir / FAILED} ({reason})", file=sys.stderr, flush=True)


def make_record(cfg: Config, plan: Plan, ctx: DistContext, pipe: Pipeline, trainer: Trainer, val_sums: MetricSums,
                test_sums: MetricSums, baselines: dict[str, Any], setup_time_s: float, started: float) -> dict[str, Any]:
    attempt_s = time.time() - started
    test = test_sums.result()
    epochs = trainer.history
    total_time = sum(e["epoch_time_s"] for e in epochs)
    per_rank, per_node = series_bytes(plan, ctx, pipe)
    record = {
        "config": asdict(cfg),
        "batching": cfg.batching.mode,
        "model": cfg.model.name,
        "world_size": ctx.world_size,
        "backend": ctx.backend,
        "device": str(ctx.device),
        "plan": {"shard": plan.shard, "node_shared": plan.node_shared, "data_device": str(plan.data_device),
                 "series_dtype": str(plan.series_dtype).replace("torch.", ""), "prefetch": plan.prefetch,
                 "threads": plan.threads, "batch_size": plan.batch_size, "global_batch_size": plan.global_batch_size,
                 "lr": plan.lr, "notes": plan.notes},
        "dataset": pipe.facts,
        "parameters": sum(p.numel() for p in pipe.model.parameters()),
        "epochs": epochs,
        "best_epoch": trainer.best_epoch,
        "val": val_sums.result(),
        "test": test,
        "baselines": baselines,
        "mape_threshold": cfg.metrics.mape_threshold,
        "data_wait_fraction": (sum(e["data_wait_s"] for e in epochs) / total_time) if total_time > 0 else None,
        "data_bytes": pipe.source.data_bytes,
        "node_data_bytes": node_data_bytes(plan, ctx, pipe),
        "series_bytes_per_rank": per_rank,
        "series_bytes_per_node": per_node,
        **data_bytes_held(plan, ctx, pipe),
        "peak_rss_bytes": peak_rss_bytes(),
        **device_peaks(ctx),
        "setup_time_s": setup_time_s,
        "wall_time_s": trainer.run_wall_time_s(attempt_s),  # over every attempt of a resumed run
        "attempts": trainer.attempt,
        "attempt_wall_time_s": attempt_s,
        "git_sha": git_sha(),
        "host": socket.gethostname(),
    }
    if "persistence" in baselines:
        record["beats_persistence"] = bool(test["avg"]["mae"] < baselines["persistence"]["avg"]["mae"])
    if cfg.trainer.pooled_steps:
        record["val_pooled"] = pooled_by_minutes(val_sums, cfg.trainer.pooled_steps, pipe.prepared.steps_per_day)
        record["test_pooled"] = pooled_by_minutes(test_sums, cfg.trainer.pooled_steps, pipe.prepared.steps_per_day)
    return record


def pooled_by_minutes(sums: MetricSums, upto_steps: list[int], steps_per_day: int | None) -> dict[str, dict[str, float]]:
    """T-GCN's reporting: metrics and accuracy pooled over output steps 1..k for each k, keyed by minutes
    ("15" for 3 five-minute steps); by steps ("3 steps") where the step does not divide a day."""
    if steps_per_day is None:
        return {f"{k} steps": m for k, m in sums.pooled(upto_steps).items()}
    minutes = 1440 / steps_per_day
    return {f"{int(k) * minutes:g}": m for k, m in sums.pooled(upto_steps).items()}


def format_pooled(pooled: dict[str, dict[str, float]]) -> str:
    lines = ["test metrics pooled over steps 1..k (T-GCN)", f"{'minutes':>8} {'MAE':>8} {'RMSE':>8} {'acc':>8}"]
    for minutes, m in pooled.items():
        lines.append(f"{minutes:>8} {m['mae']:8.4f} {m['rmse']:8.4f} {m['acc']:8.4f}")
    return "\n".join(lines)


def node_data_bytes(plan: Plan, ctx: DistContext, pipe: Pipeline) -> int:
    """Host memory for data on one node: a node-shared series counted once, private copies per rank."""
    rank_bytes = pipe.source.data_bytes
    ranks = ctx.local_world_size
    if plan.node_shared:
        shared = getattr(pipe.source, "series_bytes", 0)
        return shared + ranks * (rank_bytes - shared)
    return ranks * rank_bytes


def run_evaluation(cfg: Config, run_dir: Path, split: str) -> dict[str, Any]:
    """Metrics of the run's best checkpoint on `split` with this world size; rank 0 writes
    eval_<split>_w<world>.json. Errors and masks are summed over ranks, so any world size agrees."""
    plan, env = plan_for(cfg)
    _configure_device(cfg, plan)
    ctx = init_distributed(env, plan.compute_device, plan.backend, plan.dist_timeout_s,
                           60.0 * cfg.launcher.collective_timeout_min)
    locked_here = ctx.is_main and run_lock.hold(run_dir)  # it writes there too, and maps the run's segment
    log = RunLog(run_dir, ctx.is_main)
    try:
        pipe = build_pipeline(cfg, plan, ctx)
        wait_for_all(ctx)  # every rank's data is loaded (long timeout); training's collectives have the short one
        cfg = with_mape_threshold(cfg, pipe)
        trainer = Trainer(cfg, plan, ctx, pipe.model, pipe.prepared, pipe.source, pipe.batcher, run_dir, log,
                          pipe.baselines)
        if trainer.trainable:
            trainer.load_best(required=True)
        sums = trainer.evaluate_sums(split, with_baselines=True)
        metrics = sums["model"].result()
        baselines = {name: s.result() for name, s in sums.items() if name != "model"}
        record = {"run_dir": str(run_dir), "split": split, "world_size": ctx.world_size, "metrics": metrics,
                  "baselines": baselines, "mape_threshold": cfg.metrics.mape_threshold,
                  "checkpoint": str(rundir.best_checkpoint(run_dir)) if trainer.trainable else None}
        if cfg.trainer.save_predictions:
            from stgnn_launch.train.predictions import save_predictions

            save_predictions(trainer, split, rundir.predictions(run_dir, split))
        if ctx.is_main:
            write_json_atomic(record, run_dir / f"eval_{split}_w{ctx.world_size}.json")
            print(format_test(metrics, baselines, cfg.metrics.mape_threshold, pipe.facts["mape_threshold_rule"],
                              mape_alarms(sums)).replace("test metrics", f"{split} metrics"), flush=True)
        shutdown(ctx)
        return record
    finally:
        log.close()
        shutdown(ctx, together=False)  # no-op after the normal end
        if locked_here:
            run_lock.release(run_dir)


def format_test(test: dict[str, dict[str, float]], baselines: dict[str, dict[str, dict[str, float]]] | None = None,
                mape_threshold: float = 0.0, rule: str | None = None, notes: list[str] | None = None) -> str:
    """The test table: the model at each reported horizon, then each baseline's average beside it; `notes`
    (a MAPE above 1,000% and where it comes from) after it."""
    mape_note = f"MAPE over |y| > {mape_threshold:g}" + (f", {rule}" if rule else "")
    lines = [f"test metrics (masked, de-normalized; {mape_note})",
             f"{'horizon':>8} {'MAE':>8} {'RMSE':>8} {'MAPE':>8}"]
    for step, m in test.items():
        lines.append(f"{step:>8} {m['mae']:8.4f} {m['rmse']:8.4f} {100 * m['mape']:7.2f}%")
    for name, metrics in (baselines or {}).items():
        m = metrics["avg"]
        lines.append(f"{'avg':>8} {m['mae']:8.4f} {m['rmse']:8.4f} {100 * m['mape']:7.2f}%  <- {name}")
    return "\n".join(lines + list(notes or []))
