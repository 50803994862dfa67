"""The profiling study: short runs -> extrapolated MAE -> ranking (profile.method=curve), or successive
halving's rungs -> ranking (profile.method=halving, profile/halving.py); optionally full runs and a reference.

Cost is the runs' own wall time (results.json `wall_time_s`: setup, training, validation, test), so queue
time on Slurm does not count. Baselines (persistence, historical_average) are not trained: one run gives
their exact validation MAE, counted once in both the profiling and the full cost.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from stgnn_launch.config.schema import Config
from stgnn_launch.errors import UserError
from stgnn_launch.profile import halving
from stgnn_launch.profile.candidates import Candidate, parse_candidates
from stgnn_launch.profile.chart import bump_chart
from stgnn_launch.profile.config import StudyConfig
from stgnn_launch.profile.curve import predict_final
from stgnn_launch.profile.rank import kendall_tau, order
from stgnn_launch.profile.runner import finished, run_all, stopped_part_way
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
    overrides, shares = {}, {}
    batches_cache: dict[str, int] = {}
    for c in candidates:
        if trainable[c.label]:
            cfg = configs[c.label]
            key = json.dumps([asdict(cfg.dataset), asdict(cfg.batching), cfg.gpus], sort_keys=True, default=str)
            total = batches_cache.setdefault(key, train_batches(cfg))
            kept = max(1, math.ceil(prof.train_fraction * total))
            shares[c.label] = kept / total
            overrides[c.label] = [f"trainer.max_batches_per_epoch={kept}"] if kept < total else []
    budget: dict[str, Any] = {"method": prof.method, "profile_epochs": epochs, "full_epochs": prof.full_epochs,
                              "train_fraction": prof.train_fraction, "curve": prof.curve}
    if prof.method == "halving":
        models, plan = _halving(candidates, trainable, base, make_config, epochs, prof.eta, overrides, shares,
                                out_dir / "halving")
        budget.update(eta=prof.eta, rungs=[{"models": n, "epochs": e} for n, e in plan],
                      profiling_epochs_total=halving.spent([n for n, _ in plan], [e for _, e in plan]))
    else:
        models = _curve(candidates, trainable, base, make_config, epochs, overrides, shares, out_dir, prof)
        budget["profiling_epochs_total"] = epochs * sum(trainable.values())
    result: dict[str, Any] = {
        "dataset": configs[candidates[0].label].dataset.name,
        "method": prof.method,
        "study_dir": str(out_dir),
        "budget": budget,
        "models": models,
        "profile_cost_s": sum(m["profile_cost_s"] for m in models.values()),
    }

    if prof.full or prof.reference:  # the prediction is known now: shown before hours of full training
        ranking = predicted_order(result)
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


def _curve(candidates: list[Candidate], trainable: dict[str, bool], base: list[str], make_config: MakeConfig,
           epochs: int, overrides: dict[str, list[str]], shares: dict[str, float], out_dir: Path,
           prof) -> dict[str, dict[str, Any]]:
    """profile.method=curve: every trainable candidate `epochs` profiling epochs, its curve extrapolated."""
    jobs = [(make_config(base + ([f"trainer.max_epochs={epochs}", *overrides[c.label]] if trainable[c.label]
                                 else []), c), out_dir / "profile" / c.label) for c in candidates]
    records = dict(zip((c.label for c in candidates), run_all(jobs)))
    models: dict[str, dict[str, Any]] = {}
    for c in candidates:
        record = records[c.label]
        entry: dict[str, Any] = {"model": record.model, "trainable": trainable[c.label],
                                 "profile_cost_s": record.wall_time_s, "profile_run": str(out_dir / "profile" / c.label)}
        if trainable[c.label]:
            curve = [e.val_mae for e in record.epochs]
            entry.update(epochs=len(curve), train_share=shares[c.label], val_mae_curve=curve)
            predict_entry(entry, prof.full_epochs, prof.curve)
        else:
            entry.update(epochs=0, curve={"form": "exact"}, predicted_mae=record.val["avg"]["mae"],
                         predicted_std=0.0)
        models[c.label] = entry
    return models


def _halving(candidates: list[Candidate], trainable: dict[str, bool], base: list[str], make_config: MakeConfig,
             epochs: int, eta: int, overrides: dict[str, list[str]], shares: dict[str, float],
             out_dir: Path) -> tuple[dict[str, dict[str, Any]], list[tuple[int, int]]]:
    """profile.method=halving (profile/halving.py): rung k's runs in out_dir/rung<k>/<label>; a survivor's
    rung starts from a copy of its previous rung's checkpoints (trainer.resume), so it continues, and each
    rung's own directory keeps a rerun of the study resumable (finished rungs are reused)."""
    learners = [c for c in candidates if trainable[c.label]]
    plan = halving.schedule(len(learners), epochs * len(learners), eta)
    baselines = [c for c in candidates if not trainable[c.label]]
    records = dict(zip((c.label for c in baselines),
                       run_all([(make_config(base, c), out_dir / "baselines" / c.label) for c in baselines])))
    rungs: list[dict[str, float]] = []
    last: dict[str, tuple[int, dict]] = {}
    alive = learners
    for k, (_, rung_epochs) in enumerate(plan):
        jobs = []
        for c in alive:
            cfg = make_config(base + [f"trainer.max_epochs={rung_epochs}", *overrides[c.label]], c)
            run_dir = out_dir / f"rung{k}" / c.label
            cfg.run_dir = str(run_dir)
            if k and not finished(cfg, run_dir) and not stopped_part_way(cfg, run_dir):
                _continue_from(out_dir / f"rung{k - 1}" / c.label, run_dir, cfg)
            jobs.append((cfg, run_dir))
        rung = {}
        for c, record in zip(alive, run_all(jobs)):
            rung[c.label] = record.val["avg"]["mae"]
            last[c.label] = (k, record)
        rungs.append(rung)
        print(f"stgnn-profile: halving rung {k} ({rung_epochs} epochs): "
              + ", ".join(f"{label} {mae:.4f}" for label, mae in sorted(rung.items(), key=lambda kv: kv[1])),
              flush=True)
        if k + 1 < len(plan):
            kept = set(halving.survivors(rung, plan[k + 1][0]))
            alive = [c for c in alive if c.label in kept]
    baseline_mae = {label: r.val["avg"]["mae"] for label, r in records.items()}
    ranked = halving.ranking(rungs, baseline_mae)
    models: dict[str, dict[str, Any]] = {}
    for c in candidates:
        if not trainable[c.label]:
            record = records[c.label]
            models[c.label] = {"model": record.model, "trainable": False, "profile_cost_s": record.wall_time_s,
                               "profile_run": str(out_dir / "baselines" / c.label), "epochs": 0,
                               "curve": {"form": "exact"}, "predicted_mae": baseline_mae[c.label],
                               "predicted_std": 0.0, "rank_position": ranked.index(c.label)}
            continue
        k, record = last[c.label]
        curve = [e.val_mae for e in record.epochs]
        # wall_time_s of a resumed run spans its earlier rungs' attempts (runner.py): the candidate's whole cost
        models[c.label] = {"model": record.model, "trainable": True, "profile_cost_s": record.wall_time_s,
                           "profile_run": str(out_dir / f"rung{k}" / c.label), "epochs": len(curve),
                           "train_share": shares[c.label], "val_mae_curve": curve,
                           "rung_mae": [r[c.label] for r in rungs if c.label in r], "last_rung": k,
                           "curve": {"form": f"rung {k}/{len(plan) - 1}"},
                           # measured at its last rung, not predicted at full_epochs: no uncertainty to claim
                           "predicted_mae": rungs[k][c.label], "predicted_std": None,
                           "rank_position": ranked.index(c.label)}
    return models, plan


def _continue_from(previous: Path, run_dir: Path, cfg: Config) -> None:
    """run_dir as a run of cfg stopped after the previous rung's last epoch: its checkpoints and cfg."""
    from stgnn_launch.config.load import save_run_config
    from stgnn_launch.train import checkpoint

    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(checkpoint.checkpoint_dir(run_dir), ignore_errors=True)  # another config's (an earlier study's)
    shutil.copytree(checkpoint.checkpoint_dir(previous), checkpoint.checkpoint_dir(run_dir))
    save_run_config(cfg, run_dir)


def predicted_order(result: dict[str, Any]) -> list[str]:
    """Curve: by predicted MAE. Halving: by the rungs (profile/halving.py `ranking`)."""
    models = result["models"]
    if result.get("method") == "halving":
        return sorted(models, key=lambda label: models[label]["rank_position"])
    return order({label: m["predicted_mae"] for label, m in models.items()})


def predicted_scores(result: dict[str, Any]) -> dict[str, float]:
    """What Kendall's tau compares with the true MAEs: the predicted MAE, or halving's rank position."""
    if result.get("method") == "halving":
        return {label: float(m["rank_position"]) for label, m in result["models"].items()}
    return {label: m["predicted_mae"] for label, m in result["models"].items()}


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
    scores = predicted_scores(result)
    true_mae, reference = result.get("full_val_mae"), result.get("reference")
    orders = {"predicted": predicted_order(result)}
    if true_mae is not None:
        orders["full training"] = order(true_mae)
    if reference:
        orders[f"reference ({reference['dataset']})"] = reference["ranking"]
    result["bump_chart"] = str(bump_chart(orders, out_dir / "bump_chart.png", f"model ranks on {result['dataset']}"))
    result["ranking"] = orders["predicted"]
    result["predicted_mae"] = predicted
    if true_mae is not None:
        result["kendall_tau_predicted_vs_full"] = kendall_tau(scores, true_mae)
    if reference:
        result["kendall_tau_reference_vs_target"] = kendall_tau(reference["val_mae"], true_mae or scores)
    result["cost_fraction"] = result["profile_cost_s"] / result["full_cost_s"] if true_mae is not None else None
    write_json_atomic(result, out_dir / "profile.json")
    return result


def refit(out_dir: Path) -> dict[str, Any]:
    """Predict again from the profiling curves stored in out_dir/profile.json with this version's predictor
    (nothing trains; costs and full-training results are kept), and rewrite it."""
    result = json.loads((out_dir / "profile.json").read_text())
    if result.get("method", "curve") != "curve":
        raise UserError(f"refit: expected a curve profile in {out_dir}, found method {result['method']!r}")
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
            mae[c.label] = records[c.label].val["avg"]["mae"]
            cost += records[c.label].wall_time_s
            if profiled is not None:
                profiled[c.label].update(full_val_mae=mae[c.label], full_cost_s=records[c.label].wall_time_s,
                                         full_epochs=len(records[c.label].epochs))
        else:
            mae[c.label] = profiled[c.label]["predicted_mae"]
            cost += profiled[c.label]["profile_cost_s"]
            profiled[c.label].update(full_val_mae=mae[c.label], full_cost_s=profiled[c.label]["profile_cost_s"])
    return mae, cost


def format_table(result: dict[str, Any]) -> str:
    full = "full_val_mae" in result
    b = result["budget"]
    if result.get("method") == "halving":
        rungs = ", ".join(f"{r['models']} x {r['epochs']}" for r in b["rungs"])
        what = (f"successive halving, eta {b['eta']}, rungs (models x epochs) {rungs} on {b['train_fraction']:g} "
                f"of the windows; val MAE measured at each model's last rung")
    else:
        what = (f"curve extrapolation, {b['profile_epochs']} epochs x {b['train_fraction']:g} of the windows; "
                f"prediction at epoch {b['full_epochs']}")
    head = f"{'rank':>4}  {'model':<20} {'predicted val MAE':>20} {'curve':>14} {'epochs':>6} {'cost s':>8}"
    lines = [f"profile of {len(result['models'])} models on {result['dataset']} ({what})",
             head + ("  full val MAE" if full else "")]
    for rank, label in enumerate(result["ranking"], 1):
        m = result["models"][label]
        std = "(measured)" if m["predicted_std"] is None else f"± {m['predicted_std']:<6.4f}"
        line = (f"{rank:>4}  {label:<20} {m['predicted_mae']:>11.4f} {std:<8} "
                f"{m['curve']['form']:>14} {m['epochs']:>6} {m['profile_cost_s']:>8.1f}")
        lines.append(line + (f"  {m['full_val_mae']:12.4f}" if full else ""))
    return "\n".join(lines)


def summary_line(result: dict[str, Any]) -> str:
    return json.dumps({k: result[k] for k in SUMMARY_KEYS if k in result})
