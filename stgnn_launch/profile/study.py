"""The profiling study: short runs -> extrapolated MAE -> ranking; optionally full runs and a reference.

Cost is the runs' own wall time (results.json `wall_time_s`: setup, training, validation, test), so queue
time on Slurm does not count. Baselines (persistence, historical_average) are not trained: one run gives
their exact validation MAE, counted once in both the profiling and the full cost.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from stgnn_launch.config.schema import Config
from stgnn_launch.profile.candidates import Candidate, parse_candidates
from stgnn_launch.profile.chart import bump_chart
from stgnn_launch.profile.config import StudyConfig
from stgnn_launch.profile.curve import predict_final
from stgnn_launch.profile.rank import kendall_tau, order
from stgnn_launch.profile.runner import run_all
from stgnn_launch.train.record import write_json_atomic

# (overrides, candidate or None) -> validated training Config, composed from conf/ like stgnn-train's.
MakeConfig = Callable[[list[str], "Candidate | None"], Config]


def is_trainable(cfg: Config) -> bool:
    from stgnn_launch.models.registry import model_class

    return bool(getattr(model_class(cfg.model.name), "trainable", True))


def train_batches(cfg: Config) -> int:
    """Batches in one full training epoch (all ranks together) of this config's data, from the split
    arithmetic alone (the series' length is read, not its values)."""
    from stgnn_launch.data.datasets import dataset_num_steps
    from stgnn_launch.data.prepare import window_starts

    b, d = cfg.batching, cfg.dataset
    starts = window_starts(dataset_num_steps(d), window=b.window, horizon=b.horizon, stride=b.stride,
                           train_ratio=d.train_ratio, test_ratio=d.test_ratio, split=d.split,
                           val_ratio_of_train=d.val_ratio_of_train)
    batches = max(1, math.ceil(len(starts["train"]) / (cfg.batching.batch_size * cfg.gpus)))
    return min(batches, cfg.trainer.max_batches_per_epoch or batches)  # a cap the full runs have as well


def run_study(study: StudyConfig, base: list[str], make_config: MakeConfig, out_dir: Path) -> dict[str, Any]:
    prof = study.profile
    candidates = parse_candidates(study.models)
    configs = {c.label: make_config(base, c) for c in candidates}
    trainable = {label: is_trainable(cfg) for label, cfg in configs.items()}
    epochs = prof.profile_epochs()

    # 1. Profiling: a few epochs on a share of the training windows for every trainable candidate.
    jobs, shares = [], {}
    batches_cache: dict[str, int] = {}
    for c in candidates:
        cfg = configs[c.label]
        overrides = []
        if trainable[c.label]:
            key = json.dumps([asdict(cfg.dataset), asdict(cfg.batching), cfg.gpus], sort_keys=True, default=str)
            total = batches_cache.setdefault(key, train_batches(cfg))
            kept = max(1, math.ceil(prof.train_fraction * total))
            shares[c.label] = kept / total
            overrides = [f"trainer.max_epochs={epochs}"] + ([f"trainer.max_batches_per_epoch={kept}"] if kept < total
                                                             else [])
        jobs.append((make_config(base + overrides, c), out_dir / "profile" / c.label))
    records = dict(zip(configs, run_all(jobs)))

    models: dict[str, dict[str, Any]] = {}
    for c in candidates:
        record = records[c.label]
        exact = record["val"]["avg"]["mae"]
        entry: dict[str, Any] = {"model": record["model"], "trainable": trainable[c.label],
                                 "profile_cost_s": record["wall_time_s"], "profile_run": str(out_dir / "profile" / c.label)}
        if trainable[c.label]:
            curve = [e["val_mae"] for e in record["epochs"]]
            entry.update(epochs=len(curve), train_share=shares[c.label], val_mae_curve=curve)
            predict_entry(entry, prof.full_epochs, prof.curve)
        else:
            entry.update(epochs=0, curve={"form": "exact"}, predicted_mae=exact, predicted_std=0.0)
        models[c.label] = entry
    result: dict[str, Any] = {
        "dataset": configs[candidates[0].label].dataset.name,
        "study_dir": str(out_dir),
        "budget": {"profile_epochs": epochs, "full_epochs": prof.full_epochs, "train_fraction": prof.train_fraction,
                   "curve": prof.curve},
        "models": models,
        "profile_cost_s": sum(m["profile_cost_s"] for m in models.values()),
    }

    if prof.full or prof.reference:  # the prediction is known now: shown before hours of full training
        ranking = order({label: m["predicted_mae"] for label, m in models.items()})
        print("predicted ranking (before the full runs):\n" + format_table({**result, "ranking": ranking}), flush=True)

    # 2. Full training of every trainable candidate (early stopping), for the true order on this dataset.
    if prof.full:
        result["full_val_mae"], result["full_cost_s"] = _full_runs(
            candidates, trainable, base, make_config, prof.full_epochs, out_dir / "full", models)

    # 3. The same candidates trained fully on a reference dataset (question 1: does the dataset permute the order?).
    if prof.reference:
        ref_base = [o for o in base if not o.startswith(("dataset=", "experiment="))]
        ref_base += [f"dataset={prof.reference}", *prof.reference_overrides]
        reference_mae, _ = _full_runs(candidates, {c.label: True for c in candidates}, ref_base, make_config,
                                      prof.full_epochs, out_dir / "reference", None)
        result["reference"] = {"dataset": prof.reference, "val_mae": reference_mae, "ranking": order(reference_mae),
                               "target_order_from": "full training" if prof.full else "predicted"}
    return conclude(result, out_dir)


SUMMARY_KEYS = ("ranking", "predicted_mae", "kendall_tau_predicted_vs_full", "kendall_tau_reference_vs_target",
                "cost_fraction")


def predict_entry(entry: dict[str, Any], full_epochs: int, form: str) -> None:
    """A trainable candidate's fit and predicted MAE at `full_epochs`, from its profiling curve."""
    curve = entry["val_mae_curve"]
    progress = [(i + 1) * entry["train_share"] for i in range(len(curve))]
    fit = predict_final(progress, curve, at=float(full_epochs), form=form)
    entry.update(curve=fit.as_dict(), predicted_mae=fit.predicted, predicted_std=fit.std)


def conclude(result: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """The orders, the bump chart and the summary keys (last in profile.json) from the models' entries."""
    for key in ("bump_chart", *SUMMARY_KEYS):
        result.pop(key, None)
    predicted = {label: m["predicted_mae"] for label, m in result["models"].items()}
    true_mae, reference = result.get("full_val_mae"), result.get("reference")
    orders = {"predicted": order(predicted)}
    if true_mae is not None:
        orders["full training"] = order(true_mae)
    if reference:
        orders[f"reference ({reference['dataset']})"] = reference["ranking"]
    result["bump_chart"] = str(bump_chart(orders, out_dir / "bump_chart.png", f"model ranks on {result['dataset']}"))
    result["ranking"] = orders["predicted"]
    result["predicted_mae"] = predicted
    if true_mae is not None:
        result["kendall_tau_predicted_vs_full"] = kendall_tau(predicted, true_mae)
    if reference:
        result["kendall_tau_reference_vs_target"] = kendall_tau(reference["val_mae"], true_mae or predicted)
    result["cost_fraction"] = result["profile_cost_s"] / result["full_cost_s"] if true_mae is not None else None
    write_json_atomic(result, out_dir / "profile.json")
    return result


def refit(out_dir: Path) -> dict[str, Any]:
    """Predict again from the profiling curves stored in out_dir/profile.json with this version's predictor
    (nothing trains; costs and full-training results are kept), and rewrite it."""
    result = json.loads((out_dir / "profile.json").read_text())
    for entry in result["models"].values():
        if entry["trainable"]:
            predict_entry(entry, result["budget"]["full_epochs"], result["budget"]["curve"])
    return conclude(result, out_dir)


def _full_runs(candidates: list[Candidate], trainable: dict[str, bool], base: list[str], make_config: MakeConfig,
               full_epochs: int, out_dir: Path, profiled: dict[str, dict] | None) -> tuple[dict[str, float], float]:
    """Validation MAE after full training per label, and the total wall time. Baselines already run in
    profiling (`profiled`) are reused: their one run is their full run."""
    to_run = [c for c in candidates if trainable[c.label] or profiled is None]
    jobs = [(make_config(base + [f"trainer.max_epochs={full_epochs}"], c), out_dir / c.label) for c in to_run]
    records = dict(zip((c.label for c in to_run), run_all(jobs)))
    mae, cost = {}, 0.0
    for c in candidates:
        if c.label in records:
            mae[c.label] = records[c.label]["val"]["avg"]["mae"]
            cost += records[c.label]["wall_time_s"]
            if profiled is not None:
                profiled[c.label].update(full_val_mae=mae[c.label], full_cost_s=records[c.label]["wall_time_s"],
                                         full_epochs=len(records[c.label]["epochs"]))
        else:
            mae[c.label] = profiled[c.label]["predicted_mae"]
            cost += profiled[c.label]["profile_cost_s"]
            profiled[c.label].update(full_val_mae=mae[c.label], full_cost_s=profiled[c.label]["profile_cost_s"])
    return mae, cost


def format_table(result: dict[str, Any]) -> str:
    full = "full_val_mae" in result
    head = f"{'rank':>4}  {'model':<20} {'predicted val MAE':>20} {'curve':>14} {'epochs':>6} {'cost s':>8}"
    lines = [f"profile of {len(result['models'])} models on {result['dataset']} "
             f"({result['budget']['profile_epochs']} epochs x {result['budget']['train_fraction']:g} of the windows; "
             f"prediction at epoch {result['budget']['full_epochs']})", head + ("  full val MAE" if full else "")]
    for rank, label in enumerate(result["ranking"], 1):
        m = result["models"][label]
        line = (f"{rank:>4}  {label:<20} {m['predicted_mae']:>11.4f} ± {m['predicted_std']:<6.4f} "
                f"{m['curve']['form']:>14} {m['epochs']:>6} {m['profile_cost_s']:>8.1f}")
        lines.append(line + (f"  {m['full_val_mae']:12.4f}" if full else ""))
    return "\n".join(lines)


def summary_line(result: dict[str, Any]) -> str:
    return json.dumps({k: result[k] for k in SUMMARY_KEYS if k in result})
