"""Runs -> one row per run (report.csv), then groups of runs that differ only by seed (mean ± std),
with speedup and parallel efficiency against the smallest GPU count of the same study line.

A study line is (dataset, model, batching, variant): `variant` names the config keys, other than the
seed, the GPU count and the batching, whose values differ between runs of the same dataset and model
(e.g. `trainer.lr=0.01`), so that runs with different settings are never averaged together.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Callable

import yaml

from stgnn_launch.report.collect import DONE, FAILED, PENDING, RUNNING, Run
from stgnn_launch.rundir import EpochStats, ResultsRecord

HORIZONS = ("3", "6", "12", "avg")
SPLIT_KEYS = ("data_wait_s", "compute_s", "allreduce_s", "eval_s")  # per epoch, optional
# Config keys that never make two runs different experiments (bookkeeping, scheduling, paths).
NOT_A_VARIANT = {
    "trainer.seed", "gpus", "run_dir", "batching.mode", "dataset.name", "model.name", "dataset.path",
    "dataset.key", "dataset.adj_path", "dataset.cache_dir", "trainer.progress", "trainer.resume",
    "launcher.wait", "launcher.dry_run", "launcher.prepare_only", "launcher.partition", "launcher.account",
    "launcher.qos", "launcher.time_min", "launcher.mem_gb", "launcher.constraint", "launcher.setup",
    "launcher.sbatch_extra", "launcher.rdzv_port", "launcher.signal_delay_s", "launcher.max_restarts",
}
EPOCH_TIME_CHOICES = ("median", "fastest")

ID_COLUMNS = ["status", "dataset", "model", "batching", "gpus", "seed", "variant"]
PERF_COLUMNS = ["epoch_time_s", "samples_per_s", "speedup", "efficiency"]
MEMORY_COLUMNS = ["data_bytes_per_rank", "data_bytes_per_node", "series_bytes_per_rank", "series_bytes_per_node",
                  "peak_rss_bytes_per_rank", "peak_rss_bytes_per_node", "device_peak_bytes_per_rank",
                  "device_reserved_bytes_per_rank"]
SPLIT_COLUMNS = [*SPLIT_KEYS, "data_wait_fraction"]
ACCURACY_COLUMNS = [f"test_{metric}_{h}" for h in HORIZONS for metric in ("mae", "rmse", "mape_pct")]
TAIL_COLUMNS = ["epochs", "best_epoch", "setup_time_s", "wall_time_s", "attempts", "run_dir", "job_id", "error"]
CSV_COLUMNS = ID_COLUMNS + PERF_COLUMNS + MEMORY_COLUMNS + SPLIT_COLUMNS + ACCURACY_COLUMNS + TAIL_COLUMNS


@dataclass
class Group:
    """Runs of one study line at one GPU count: the seeds of one experiment."""

    line: tuple[str, str, str, str]  # dataset, model, batching, variant
    gpus: int | None
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def done(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["status"] == DONE]

    def count(self, status: str) -> int:
        return sum(r["status"] == status for r in self.rows)

    def stat(self, column: str) -> tuple[float | None, float | None]:
        """Mean and sample standard deviation over the finished runs (std None with one run)."""
        values = [r[column] for r in self.done if isinstance(r.get(column), (int, float))]
        if not values:
            return None, None
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def build_rows(runs: list[Run], epoch_time: str = "median") -> list[dict[str, Any]]:
    """One row per run, in study order, with speedup and efficiency filled in."""
    configs = [run.config or (_infer_pending_config(run, runs) if run.status == PENDING else {}) for run in runs]
    flat = [_flatten(c) for c in configs]
    variants = _variants(flat)
    rows = [_row(run, f, v, epoch_time) for run, f, v in zip(runs, flat, variants)]
    rows.sort(key=_order)
    _add_speedup(rows)
    return rows


def group_rows(rows: list[dict[str, Any]]) -> list[Group]:
    groups: dict[tuple, Group] = {}
    for row in rows:
        line = (row["dataset"], row["model"], row["batching"], row["variant"])
        groups.setdefault((line, row["gpus"]), Group(line, row["gpus"])).rows.append(row)
    return list(groups.values())


# ---- one run -----------------------------------------------------------------------------------------
def _row(run: Run, flat: dict[str, Any], variant: str, epoch_time: str) -> dict[str, Any]:
    res = run.results or ResultsRecord()
    row: dict[str, Any] = dict.fromkeys(CSV_COLUMNS)
    row.update(status=run.status, dataset=flat.get("dataset.name"), model=flat.get("model.name"),
               batching=flat.get("batching.mode"),
               gpus=_int(res.world_size if res.world_size is not None else flat.get("gpus")),
               seed=_int(flat.get("trainer.seed")), variant=variant, run_dir=str(run.run_dir),
               job_id=run.job_id, error=run.error)
    if run.status != DONE:
        return row
    epochs = [e.to_dict() for e in res.epochs if isinstance(e, EpochStats)]
    timed = _timed_epochs(epochs, epoch_time)
    row.update(
        epoch_time_s=_median(timed, "epoch_time_s"), samples_per_s=_median(timed, "samples_per_s"),
        data_bytes_per_rank=res.data_bytes, data_bytes_per_node=res.node_data_bytes,
        series_bytes_per_rank=res.series_bytes_per_rank, series_bytes_per_node=res.series_bytes_per_node,
        peak_rss_bytes_per_rank=res.peak_rss_bytes, peak_rss_bytes_per_node=res.extra.get("peak_rss_node_bytes"),
        device_peak_bytes_per_rank=res.device_peak_allocated_bytes,
        device_reserved_bytes_per_rank=res.device_peak_reserved_bytes,
        data_wait_fraction=res.data_wait_fraction, epochs=len(epochs), best_epoch=res.best_epoch,
        setup_time_s=res.setup_time_s, wall_time_s=res.wall_time_s,
        attempts=1 if res.attempts is None else res.attempts,  # > 1: requeued or resumed; wall_time_s spans them
    )
    for key in SPLIT_KEYS:
        row[key] = _median(timed, key)
    for h in HORIZONS:
        metrics = (res.test or {}).get(h) or {}
        row[f"test_mae_{h}"], row[f"test_rmse_{h}"] = metrics.get("mae"), metrics.get("rmse")
        row[f"test_mape_pct_{h}"] = None if metrics.get("mape") is None else 100 * metrics["mape"]
    return row


def _timed_epochs(epochs: list[dict[str, Any]], how: str) -> list[dict[str, Any]]:
    """The epochs after the first (it carries the warm-up), or the first when it is the only one;
    `fastest` keeps only the fastest of those."""
    timed = epochs[1:] or epochs[:1]
    if how == "fastest" and timed:
        timed = [min(timed, key=lambda e: e.get("epoch_time_s", math.inf))]
    return timed


def _median(epochs: list[dict[str, Any]], key: str) -> float | None:
    values = [e[key] for e in epochs if isinstance(e.get(key), (int, float))]
    return statistics.median(values) if values else None


# ---- speedup and efficiency ----------------------------------------------------------------------------
def _add_speedup(rows: list[dict[str, Any]]) -> None:
    """speedup = mean epoch time at the line's smallest GPU count with a finished run / this run's;
    efficiency = speedup / (gpus / that count)."""
    for group_rows_ in _by(rows, lambda r: (r["dataset"], r["model"], r["batching"], r["variant"])).values():
        timed = [r for r in group_rows_ if r["status"] == DONE and r["epoch_time_s"] and r["gpus"]]
        if not timed:
            continue
        base_gpus = min(r["gpus"] for r in timed)
        base_time = statistics.fmean(r["epoch_time_s"] for r in timed if r["gpus"] == base_gpus)
        for row in timed:
            row["speedup"] = base_time / row["epoch_time_s"]
            row["efficiency"] = row["speedup"] / (row["gpus"] / base_gpus)


def _by(rows: list[dict[str, Any]], key: Callable[[dict[str, Any]], Any]) -> dict[Any, list[dict[str, Any]]]:
    out: dict[Any, list[dict[str, Any]]] = {}
    for row in rows:
        out.setdefault(key(row), []).append(row)
    return out


# ---- configs: flattening, variants, pending points --------------------------------------------------------
def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"trainer": {"lr": 0.01}} -> {"trainer.lr": 0.01}; an empty mapping stays a value."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _variants(flats: list[dict[str, Any]]) -> list[str]:
    """For each run, `key=value` of the keys that vary among the runs of its dataset and model. A key
    that some runs lack (written by an older version, before the key existed) is compared among the
    runs that have it, and never shown for those that lack it."""
    by_model: dict[tuple, list[int]] = {}
    for i, flat in enumerate(flats):
        by_model.setdefault((flat.get("dataset.name"), flat.get("model.name")), []).append(i)
    variants = [""] * len(flats)
    for members in by_model.values():
        keys = sorted({k for i in members for k in flats[i]} - NOT_A_VARIANT)
        varying = [k for k in keys if len({_text(flats[i][k]) for i in members if k in flats[i]}) > 1]
        for i in members:
            variants[i] = " ".join(f"{k}={_text(flats[i][k])}" for k in varying if k in flats[i])
    return variants


def _infer_pending_config(run: Run, runs: list[Run]) -> dict[str, Any]:
    """A pending sweep point has only its overrides: start from a sibling of the same sweep that has a
    config (the keys a point does not override are the sweep's own), then apply the overrides."""
    siblings = [r for r in runs if r.config and r.run_dir.parent == run.run_dir.parent]
    config = json.loads(json.dumps(siblings[0].config)) if siblings else {}
    for override in run.overrides:
        key, sep, text = override.lstrip("+~").partition("=")
        if not sep or key.startswith("hydra."):
            continue
        value = _parse_value(text)
        if key in ("dataset", "model"):
            key = f"{key}.name"
            config.get(key.split(".")[0], {}).pop("params", None)  # another model's parameters
        elif key == "batching":
            key = "batching.mode"
        _set(config, key.split("."), value)
    return config


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _set(config: dict[str, Any], path: list[str], value: Any) -> None:
    for part in path[:-1]:
        node = config.get(part)
        if not isinstance(node, dict):
            node = config[part] = {}
        config = node
    config[path[-1]] = value


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), sort_keys=True)


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


_STATUS_ORDER = {DONE: 0, RUNNING: 1, PENDING: 2, FAILED: 3}


BATCHING_ORDER = ("standard", "index", "dist_index")


def _order(row: dict[str, Any]) -> tuple:
    batching = row["batching"]
    rank = BATCHING_ORDER.index(batching) if batching in BATCHING_ORDER else len(BATCHING_ORDER)
    return (str(row["dataset"]), str(row["model"]), rank, str(batching), row["variant"],
            row["gpus"] if row["gpus"] is not None else math.inf,
            row["seed"] if row["seed"] is not None else math.inf, _STATUS_ORDER[row["status"]], row["run_dir"])
