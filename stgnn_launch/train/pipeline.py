"""A rank's pipeline, in the order of the data path: plan -> data -> split and scaler -> windows -> model.

The plan (stgnn_launch/planning/) is decided once, here, and every step below only reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from stgnn_launch.config.schema import Config
from stgnn_launch.data.batching import TrainSchedule, WindowSource, build_source
from stgnn_launch.data.datasets import dataset_shape, load_dataset
from stgnn_launch.data.prepare import Prepared, fill_missing, input_ranges, prepare, scaler_from_sums
from stgnn_launch.data.prepare.checks import graph_warnings, sensor_warnings
from stgnn_launch.data.prepare.missing import count_missing
from stgnn_launch.data.graph import SparseGraph
from stgnn_launch.data.series import Series
from stgnn_launch.data.summary import format_step
from stgnn_launch.distributed.context import DistContext, RankEnv
from stgnn_launch.errors import UserError
from stgnn_launch.models.checkpointing import enable_activation_checkpointing
from stgnn_launch.models.registry import ModelSpec, build_model, model_class
from stgnn_launch.models.residual import fitted_average, with_base
from stgnn_launch.planning.estimate import SIDE_BASELINE_READINGS
from stgnn_launch.planning.machine import Machine
from stgnn_launch.planning.plan import Plan, apply_threads, make_plan
from stgnn_launch.rundir import DatasetFacts
from stgnn_launch.train.metrics import mape_threshold_facts
from stgnn_launch.train.trainer import fit_baseline, seed_everything


@dataclass
class Pipeline:
    """Everything a Trainer needs, built in the order of the data path."""

    prepared: Prepared
    source: WindowSource
    batcher: TrainSchedule
    model: nn.Module
    baselines: dict[str, nn.Module]
    facts: DatasetFacts


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
    return replace(cfg, metrics=replace(cfg.metrics, mape_threshold=pipe.facts.mape_threshold))


def model_spec(prepared: Prepared, graph: SparseGraph) -> ModelSpec:
    return ModelSpec(num_nodes=prepared.values.shape[1], in_features=prepared.in_features,
                     out_features=prepared.out_features, window=prepared.window, horizon=prepared.horizon,
                     graph=graph, steps_per_day=prepared.steps_per_day, tod_channel=prepared.tod_channel)


def train_readings(prepared: Prepared) -> int:
    """Readings in the training range (its windows' inputs): what a fitting pass beside the model reads."""
    return prepared.values[:int(prepared.starts["train"][-1]) + prepared.window].numel()


def build_baselines(cfg: Config, plan: Plan, prepared: Prepared, spec: ModelSpec, device: torch.device,
                    average: nn.Module | None = None) -> dict[str, nn.Module]:
    """Persistence always, and the historical average where the step has time-of-day slots, scored on the
    same test windows as the model (so a run tells at once whether its model learned anything). `average`:
    one the model's fitted base already holds, from the same training range: not fitted a second time."""
    from stgnn_launch.models.baselines import HistoricalAverage, Persistence

    baselines: dict[str, nn.Module] = {}
    if cfg.model.name != "persistence":
        baselines["persistence"] = Persistence(spec).to(device)
    # Its fit is a pass with full-size temporaries over the training range: beside the model only where that
    # stays small (a year of PeMS would add GBs per rank); model=historical_average itself always fits.
    small = train_readings(prepared) <= SIDE_BASELINE_READINGS
    if prepared.has_slots and small and plan.shard != "time" and cfg.model.name != "historical_average":
        if average is None:
            average = HistoricalAverage(spec).to(device)
            fit_baseline(average, prepared)
        baselines["historical_average"] = average
    return baselines


def dataset_facts(cfg: Config, plan: Plan, ctx: DistContext, prepared: Prepared, series: Series,
                  filled: int) -> DatasetFacts:
    """What the run's data is (results.json `dataset`); the sensor and graph checks and the missing count
    are rank 0's (it prints them)."""
    return DatasetFacts(
        name=cfg.dataset.name, num_steps=series.num_steps, num_nodes=series.num_nodes,
        num_features=series.num_features, start=str(series.timestamps[0]), step=format_step(series.step),
        step_s=float(series.step / np.timedelta64(1, "s")), time_shard=plan.shard == "time",
        node_shared=plan.node_shared, filled_readings=filled, series_bytes=series.nbytes,
        warnings=sensor_warnings(prepared.values, series.sensor_ids, series.feature_names,
                                 input_ranges(prepared.starts["train"], prepared.window), prepared.null_value)
        + graph_warnings(series.graph, series.sensor_ids) if ctx.is_main else [],
        windows={split: len(starts) for split, starts in prepared.starts.items()},
        missing_readings=count_missing(prepared.values, prepared.null_value) if ctx.is_main else None,
        readings=prepared.values.numel(),
        **mape_threshold_facts(cfg.metrics.mape_threshold, prepared.scaler, prepared.out_features))


def build_model_for(cfg: Config, plan: Plan, prepared: Prepared, spec: ModelSpec, step: str | None) -> nn.Module:
    if getattr(model_class(cfg.model.name), "needs_slots", False) and not prepared.has_slots:
        raise UserError(f"model={cfg.model.name}: expected a series whose step divides a day, with the time-of-day "
                        f"covariate (dataset.covariates), found a step of {step}")
    seed_everything(cfg.trainer.seed, cfg.trainer.deterministic)  # same initial weights on every rank
    model = build_model(cfg.model.name, spec, dict(cfg.model.params))
    enable_activation_checkpointing(model, cfg.trainer.activation_checkpointing)  # read by the models' steps
    fits = plan.shard != "time" and train_readings(prepared) <= SIDE_BASELINE_READINGS
    model = with_base(model, cfg.model.base, spec, prepared.has_slots, fits).to(plan.compute_device)
    if not getattr(model, "trainable", True) or getattr(model, "fits_on_train", False):
        fit_baseline(model, prepared)
    return model


def build_pipeline(cfg: Config, plan: Plan, ctx: DistContext) -> Pipeline:
    prepared, series, steps_per_epoch, filled = load_prepared(cfg, plan, ctx)
    facts = dataset_facts(cfg, plan, ctx, prepared, series, filled)
    graph = series.graph
    del series
    spec = model_spec(prepared, graph)
    model = build_model_for(cfg, plan, prepared, spec, facts.step)
    baselines = build_baselines(cfg, plan, prepared, spec, plan.compute_device, fitted_average(model))
    source = build_source(plan.mode, prepared, plan.data_device, plan.compute_device)
    # The field's pipeline keeps only the materialized windows (standard); a series on the GPU needs no host
    # copy (a node-shared one stays mapped once per node, for the node's other ranks): drop this rank's view.
    if not plan.layout.batching.keeps_series or plan.data_on_gpu:
        prepared = prepared.with_values(torch.empty((0,) + tuple(prepared.values.shape[1:]),
                                                    dtype=prepared.values.dtype))
    batcher = TrainSchedule(source.count("train"), batch_size=plan.batch_size, shuffle=cfg.batching.shuffle,
                      seed=cfg.trainer.seed, rank=plan.schedule_rank, world=plan.schedule_world,
                      max_train_batches=steps_per_epoch)
    return Pipeline(prepared, source, batcher, model, baselines, facts)


def configure_device(cfg: Config, plan: Plan) -> None:
    apply_threads(plan)
    if plan.compute_device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = cfg.trainer.tf32
        torch.backends.cudnn.allow_tf32 = cfg.trainer.tf32
