"""The run directory's layout: every file a run writes and a tool reads back, named here and nowhere else.

    <run dir>/config.yaml        the resolved, validated config every rank, stgnn-eval and a resume read
             results.json       the run record (a finished run)
             failed.json        the error of a run that stopped (instead of results.json)
             train.log          everything rank 0 printed
             metrics.csv        one row per finished epoch
             predictions.npz    trainer.save_predictions=true (predictions_<split>.npz from stgnn-eval)
             checkpoints/       last.pt (every epoch, step checkpoints too) and best.pt
             .run.lock          the flock that keeps one run per directory
    <sweep dir>/sweep.json       a Slurm sweep's manifest (points, run directories, job ids)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

CONFIG = "config.yaml"
RESULTS = "results.json"
FAILED = "failed.json"
LOG = "train.log"
METRICS = "metrics.csv"
PREDICTIONS = "predictions.npz"
CHECKPOINTS = "checkpoints"
LAST = "last.pt"
BEST = "best.pt"
LOCK = ".run.lock"
SWEEP = "sweep.json"
RUN_FILES = (CONFIG, RESULTS, FAILED)  # any of them marks a folder as a run directory


def checkpoints(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINTS


def last_checkpoint(run_dir: Path) -> Path:
    return checkpoints(run_dir) / LAST


def best_checkpoint(run_dir: Path) -> Path:
    return checkpoints(run_dir) / BEST


def predictions(run_dir: Path, split: str | None = None) -> Path:
    """predictions.npz of a training run, predictions_<split>.npz of stgnn-eval."""
    return Path(run_dir) / (PREDICTIONS if split is None else f"predictions_{split}.npz")


# ---- typed records -------------------------------------------------------------------------------------
# results.json is one ResultsRecord: the trainer builds it, every reader (stgnn-report, stgnn-profile, a
# Slurm job's follow) reads it back with `read_results`. The file keeps its plain-JSON shape: `to_dict` gives
# the same keys, in the same order, as ever; a file of an older version (keys missing) loads with those
# fields None, and keys this version does not know are kept in `extra` and written back unchanged.

Metrics = dict[str, dict[str, float]]  # horizon ("3", "6", "12", "avg") -> metric (mae, rmse, mape, count) -> value


class _Record:
    """to_dict / from_dict for the dataclasses below: field order is key order; `OPTIONAL` keys are left
    out while None (a record that has no such thing, not an unknown one)."""

    OPTIONAL: tuple[str, ...] = ()
    NESTED: dict[str, type] = {}  # field -> record type (a list field: one record per item)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.name == "extra" or (value is None and f.name in self.OPTIONAL):
                continue
            if isinstance(value, _Record):
                value = value.to_dict()
            elif isinstance(value, list) and f.name in self.NESTED:
                value = [v.to_dict() if isinstance(v, _Record) else v for v in value]
            out[f.name] = value
        out.update(getattr(self, "extra", None) or {})
        return out

    @classmethod
    def from_dict(cls, data: Any) -> Any:
        """Raises TypeError (naming the record) for anything but a JSON object where a record belongs."""
        if not isinstance(data, dict):
            raise TypeError(f"{cls.__name__}: expected a JSON object, found {type(data).__name__}")
        names = {f.name for f in fields(cls)} - {"extra"}  # type: ignore[arg-type]
        known: dict[str, Any] = {k: v for k, v in data.items() if k in names}
        for name, kind in cls.NESTED.items():
            value = known.get(name)
            if isinstance(value, list):
                known[name] = [kind.from_dict(v) for v in value]  # type: ignore[attr-defined]
            elif value is not None:
                known[name] = kind.from_dict(value)  # type: ignore[attr-defined]
        extra = {k: v for k, v in data.items() if k not in names}
        if "extra" in {f.name for f in fields(cls)}:  # type: ignore[arg-type]
            known["extra"] = extra
        return cls(**known)


@dataclass(kw_only=True)
class EpochStats(_Record):
    """One finished epoch: a row of results.json's `epochs`, of metrics.csv, and of a checkpoint's history.
    The time split (data wait, compute, all-reduce, eval) is None in files older than it."""

    epoch: int
    train_loss: float
    val_mae: float
    epoch_time_s: float
    samples_per_s: float
    lr: float
    data_wait_s: float | None = None  # blocked on the batch feed
    compute_s: float | None = None  # forward, backward, optimizer step (the rest of the training loop)
    allreduce_s: float | None = None  # gradient all-reduce, launch to done per bucket; overlaps backward
    eval_s: float | None = None  # validation
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(kw_only=True)
class DatasetFacts(_Record):
    """What the run's data was (results.json `dataset`); `warnings` and `missing_readings` are rank 0's."""

    name: str | None = None
    num_steps: int | None = None  # this rank's steps where time-sharded
    num_nodes: int | None = None
    num_features: int | None = None
    start: str | None = None
    step: str | None = None  # e.g. "5min"
    step_s: float | None = None
    time_shard: bool | None = None
    node_shared: bool | None = None
    filled_readings: int | None = None  # NaN or infinite readings rewritten as missing
    series_bytes: int | None = None
    warnings: list[str] = field(default_factory=list)
    windows: dict[str, int] = field(default_factory=dict)  # split -> number of windows
    missing_readings: int | None = None
    readings: int | None = None
    mape_threshold: float | None = None
    mape_threshold_rule: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(kw_only=True)
class PlanFacts(_Record):
    """The plan the run followed (results.json `plan`): planning/plan.py's decisions, as plain values."""

    shard: str | None = None
    node_shared: bool | None = None
    data_device: str | None = None
    series_dtype: str | None = None
    prefetch: bool | None = None
    threads: int | None = None
    batch_size: int | None = None
    global_batch_size: int | None = None
    lr: float | None = None
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(kw_only=True)
class ResultsRecord(_Record):
    """results.json: a finished run. Keys in this order; byte counts per rank unless named per node."""

    OPTIONAL = ("beats_persistence", "val_pooled", "test_pooled")
    NESTED = {"plan": PlanFacts, "dataset": DatasetFacts, "epochs": EpochStats}

    config: dict[str, Any] = field(default_factory=dict)  # the resolved config, nested as config.yaml
    batching: str | None = None
    model: str | None = None
    world_size: int | None = None
    backend: str | None = None
    device: str | None = None
    plan: PlanFacts | None = None
    dataset: DatasetFacts | None = None
    parameters: int | None = None
    epochs: list[EpochStats] = field(default_factory=list)
    best_epoch: int | None = None
    val: Metrics | None = None
    test: Metrics | None = None
    baselines: dict[str, Metrics] = field(default_factory=dict)  # name -> test metrics on the same windows
    mape_threshold: float | None = None
    data_wait_fraction: float | None = None
    data_bytes: int | None = None
    node_data_bytes: int | None = None
    series_bytes_per_rank: int | None = None
    series_bytes_per_node: int | None = None
    host_data_bytes_per_rank: int | None = None
    host_data_bytes_per_node: int | None = None
    device_data_bytes_per_rank: int | None = None
    device_data_bytes_per_node: int | None = None
    peak_rss_bytes: int | None = None
    device_peak_allocated_bytes: int | None = None
    device_peak_reserved_bytes: int | None = None
    setup_time_s: float | None = None  # process group, data, split, scaler, windows, model
    wall_time_s: float | None = None  # over every attempt of a resumed run
    attempts: int | None = None
    attempt_wall_time_s: float | None = None
    git_sha: str | None = None
    host: str | None = None
    beats_persistence: bool | None = None  # only where the persistence baseline ran
    val_pooled: dict[str, dict[str, float]] | None = None  # only with trainer.pooled_steps
    test_pooled: dict[str, dict[str, float]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def read_results(run_dir: Path) -> ResultsRecord:
    """results.json of `run_dir`; OSError, ValueError (not JSON) or TypeError (not a record) on a bad file."""
    return ResultsRecord.from_dict(json.loads((Path(run_dir) / RESULTS).read_text()))
