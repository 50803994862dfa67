"""Dataset-specific profiling study: does the dataset permute the models' order, and does profiling find it?

For each dataset and seed, `stgnn-profile ... profile.full=true` trains every candidate briefly (the
profile), then to convergence (early stopping) for the true order. Afterwards, per dataset: the true
order (validation MAE after full training, mean and spread over the seeds), Kendall's tau between that
order and the representative dataset's (question 1), the profiler's tau between its predicted order and
the true one, and its cost fraction (profiling time / full training time), per seed and on average
(question 2). Finished pairs (their profile.json exists) are reused, and inside an unfinished pair
stgnn-profile reuses the runs that finished, so the study can be stopped and resumed.

    nice python benchmarks/profile_study.py [--datasets synthetic,losloop,chickenpox,montevideo_bus]
        [--seeds 0 1] [--representative synthetic] [--out benchmarks/results/profile_study] [overrides ...]

Extra overrides (e.g. profile.full_epochs=10) go to every stgnn-profile call; --collect starts nothing and
summarizes the runs finished so far; --refit also predicts again from each finished pair's stored
profiling curves with the current predictor (profile/study.py `refit`: nothing trains). Writes study.json and
study.md under --out; the last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from stgnn_launch.profile import halving
from stgnn_launch.profile.curve import predict_final
from stgnn_launch.profile.rank import kendall_tau, order
from stgnn_launch.profile.study import refit

MODELS = ["persistence", "historical_average", "tgcn", "a3tgcn", "dcrnn", "gwnet"]
NO_TIME_OF_DAY = {"chickenpox"}  # weekly steps: no time-of-day slot, so no historical average


def models_for(dataset: str) -> list[str]:
    return [m for m in MODELS if not (m == "historical_average" and dataset in NO_TIME_OF_DAY)]


def run_profile(dataset: str, seed: int, out: Path, overrides: list[str], collect: bool, again: bool) -> dict | None:
    target = out / dataset / f"seed{seed}"
    done = target / "profile.json"
    if not done.is_file() and collect:
        return None
    if done.is_file() and again:
        return refit(target)
    if not done.is_file():
        cmd = [sys.executable, "-m", "stgnn_launch.cli.profile", f"dataset={dataset}",
               f"models=[{','.join(models_for(dataset))}]", "profile.full=true", f"trainer.seed={seed}",
               f"profile.out_dir={target}", "trainer.progress=false", *overrides]
        print(f"[{time.strftime('%H:%M:%S')}] {' '.join(cmd[3:])}", flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"stgnn-profile failed on {dataset} seed {seed}:\n{proc.stderr[-3000:]}")
    return json.loads(done.read_text())


def spread(values: list[float | None]) -> dict[str, float | None]:
    found = [v for v in values if v is not None]
    if not found:
        return {"mean": None, "std": None}
    return {"mean": statistics.mean(found), "std": statistics.stdev(found) if len(found) > 1 else 0.0}


def bare_tau(run: dict) -> float | None:
    """Kendall's tau against full training of the fitted curves' own values (no shrinkage; profile.json
    written since the predictor shrinks holds them), for comparing the two predictors on the same runs."""
    bare = {}
    for label, m in run["models"].items():
        bare[label] = m["curve"].get("extrapolated") if m["trainable"] else m["predicted_mae"]
        if bare[label] is None:
            return None
    return kendall_tau(bare, run["full_val_mae"])


def summarize(runs: dict[str, list[dict]], representative: str) -> dict:
    true_mae = {}
    for dataset, seeds in runs.items():
        labels = seeds[0]["full_val_mae"]
        true_mae[dataset] = {m: spread([s["full_val_mae"][m] for s in seeds]) for m in labels}
    rep = {m: v["mean"] for m, v in true_mae[representative].items()}
    out = {}
    for dataset, seeds in runs.items():
        mean_mae = {m: v["mean"] for m, v in true_mae[dataset].items()}
        out[dataset] = {
            "seeds": len(seeds),
            "true_order": order(mean_mae),
            "full_val_mae": true_mae[dataset],
            "true_order_per_seed": [order(s["full_val_mae"]) for s in seeds],
            "predicted_order_per_seed": [s["ranking"] for s in seeds],
            "tau_vs_representative": kendall_tau(rep, mean_mae),
            "tau_predicted_vs_full": spread([s.get("kendall_tau_predicted_vs_full") for s in seeds]),
            "tau_predicted_vs_full_per_seed": [s.get("kendall_tau_predicted_vs_full") for s in seeds],
            "tau_bare_extrapolation_per_seed": [bare_tau(s) for s in seeds],
            "cost_fraction": spread([s.get("cost_fraction") for s in seeds]),
            "profile_cost_s": spread([s["profile_cost_s"] for s in seeds]),
            "full_cost_s": spread([s["full_cost_s"] for s in seeds]),
        }
    return out


def replay_pair(run: dict, epochs: int, eta: int = 2) -> dict:
    """Both methods at the budget of `epochs` profiling epochs per trained candidate, replayed on one finished
    curve-method pair's recorded profiling curves (nothing trains): the curve method fitted to their first
    `epochs` points; successive halving (profile/halving.py) with that budget, its rung MAE the best epoch so
    far. None for halving when its schedule needs more epochs than were recorded. Cost: each candidate's
    recorded profiling wall time prorated by the epochs it would train (so a run's fixed setup and test
    time are prorated too), plus the baselines' one run, over the full runs' wall time; and the same in
    epochs x windows over the full runs' epochs."""
    models, full = run["models"], run["full_val_mae"]
    learners = {label: m for label, m in models.items() if m["trainable"]}
    baselines = {label: m["predicted_mae"] for label, m in models.items() if not m["trainable"]}
    share = next(iter(learners.values()))["train_share"] if learners else 1.0
    recorded = min((len(m["val_mae_curve"]) for m in learners.values()), default=0)
    full_units = sum(m.get("full_epochs", run["budget"]["full_epochs"]) for m in learners.values())
    fixed_s = sum(m["profile_cost_s"] for m in models.values() if not m["trainable"])

    def cost(trained: dict[str, int]) -> tuple[float, float]:
        wall = fixed_s + sum(learners[l]["profile_cost_s"] * e / len(learners[l]["val_mae_curve"])
                             for l, e in trained.items())
        return wall / run["full_cost_s"], sum(trained.values()) * share / full_units

    out: dict = {"epochs": epochs, "budget_epochs": epochs * len(learners)}
    if epochs <= recorded:
        predicted = dict(baselines)
        for label, m in learners.items():
            curve = m["val_mae_curve"][:epochs]
            fit = predict_final([(i + 1) * m["train_share"] for i in range(epochs)], curve,
                                at=float(run["budget"]["full_epochs"]), form=run["budget"].get("curve", "auto"))
            predicted[label] = fit.predicted
        wall, units = cost({label: epochs for label in learners})
        out["curve"] = {"tau": kendall_tau(predicted, full), "cost_fraction": wall, "epoch_fraction": units,
                        "ranking": order(predicted)}
    plan = halving.schedule(len(learners), epochs * len(learners), eta)
    if plan and plan[-1][1] <= recorded:
        played = halving.replay({l: m["val_mae_curve"] for l, m in learners.items()}, plan, baselines)
        wall, units = cost(played["epochs"])
        out["halving"] = {"tau": kendall_tau({l: float(i) for i, l in enumerate(played["ranking"])}, full),
                          "cost_fraction": wall, "epoch_fraction": units, "ranking": played["ranking"],
                          "rungs": [[n, e] for n, e in plan]}
    return out


def replay_table(runs: dict[str, list[dict]], budgets: list[int], seeds: list[int], command: str) -> tuple[dict, str]:
    """Per dataset, seed and budget: both methods' tau against full training and their cost fractions."""
    found: dict = {}
    lines = [f"Command: `{command}` (a replay on the recorded profiling curves: nothing trained)", "",
             "| dataset | seed | epochs per model (budget) | curve tau | curve cost (wall / epochs) "
             "| halving rungs (models x epochs) | halving tau | halving cost (wall / epochs) |",
             "|---|---:|---|---:|---|---|---:|---|"]
    for dataset, pairs in runs.items():
        for seed, run in zip(seeds, pairs):
            for epochs in budgets:
                r = replay_pair(run, epochs)
                found.setdefault(dataset, {}).setdefault(f"seed{seed}", {})[str(epochs)] = r
                c, h = r.get("curve"), r.get("halving")
                tau = lambda m: "n/a" if m is None or m["tau"] is None else f"{m['tau']:.2f}"  # noqa: E731
                fr = lambda m: "n/a" if m is None else f"{m['cost_fraction']:.3f} / {m['epoch_fraction']:.3f}"  # noqa: E731
                rungs = ", ".join(f"{n} x {e}" for n, e in h["rungs"]) if h else "n/a"
                lines.append(f"| {dataset} | {seed} | {epochs} ({r['budget_epochs']}) | {tau(c)} | {fr(c)} | "
                             f"{rungs} | {tau(h)} | {fr(h)} |")
    return found, "\n".join(lines) + "\n"


def _fmt(value: dict[str, float | None], digits: int = 2) -> str:
    if value["mean"] is None:
        return "n/a"
    return f"{value['mean']:.{digits}f} ± {value['std']:.{digits}f}"


def _per_seed(taus: list[float | None]) -> str:
    return ", ".join("n/a" if t is None else f"{t:.2f}" for t in taus)


def markdown(summary: dict, representative: str, command: str) -> str:
    lines = [f"Command: `{command}`", "",
             f"| dataset | true order (full training, mean val MAE over seeds) | tau vs {representative} "
             "| tau predicted vs full (per seed) | same, bare extrapolation | cost fraction |",
             "|---|---|---:|---|---|---:|"]
    for dataset, s in summary.items():
        true = " < ".join(f"{m} {s['full_val_mae'][m]['mean']:.3f}±{s['full_val_mae'][m]['std']:.3f}"
                          for m in s["true_order"])
        tau_ref = "—" if dataset == representative or s["tau_vs_representative"] is None \
            else f"{s['tau_vs_representative']:.2f}"
        lines.append(f"| {dataset} ({s['seeds']} seeds) | {true} | {tau_ref} | {_fmt(s['tau_predicted_vs_full'])} "
                     f"({_per_seed(s['tau_predicted_vs_full_per_seed'])}) | "
                     f"{_per_seed(s['tau_bare_extrapolation_per_seed'])} | {_fmt(s['cost_fraction'], 3)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="synthetic,losloop,chickenpox,montevideo_bus")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--representative", default="synthetic")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/profile_study"))
    parser.add_argument("--collect", action="store_true",
                        help="start nothing: summarize the (dataset, seed) runs already finished")
    parser.add_argument("--refit", action="store_true",
                        help="with --collect: predict again from the finished pairs' stored curves (nothing trains)")
    parser.add_argument("--replay", type=int, nargs="*", metavar="EPOCHS",
                        help="with --collect: curve vs successive halving replayed on the finished pairs' recorded "
                             "profiling curves at these profiling epochs per model (writes replay.json, replay.md)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    if args.refit and not args.collect:
        raise SystemExit("--refit: expected together with --collect (it only re-predicts finished pairs)")
    datasets = args.datasets.split(",")
    if args.representative not in datasets:
        raise SystemExit(f"--representative: expected one of --datasets {datasets}, found {args.representative!r}")
    out = args.out.resolve()
    runs = {d: [r for seed in args.seeds
                if (r := run_profile(d, seed, out, args.overrides, args.collect, args.refit)) is not None]
            for d in datasets}
    runs = {d: found for d, found in runs.items() if found}
    if args.representative not in runs:
        raise SystemExit(f"--representative {args.representative}: no finished run to compare with")
    command = "python benchmarks/profile_study.py " + " ".join(sys.argv[1:])
    if args.replay:
        if not args.collect:
            raise SystemExit("--replay: expected together with --collect (it replays finished pairs)")
        if any(len(found) != len(args.seeds) for found in runs.values()):
            raise SystemExit("--replay: expected every seed of every dataset finished")
        found, table = replay_table(runs, args.replay, args.seeds, command)
        (args.out / "replay.json").write_text(json.dumps({"command": command, "datasets": found}, indent=1) + "\n")
        (args.out / "replay.md").write_text(table)
        print(table)
        return
    summary = summarize(runs, args.representative)
    (args.out / "study.json").write_text(json.dumps({"command": command, "datasets": summary}, indent=1) + "\n")
    table = markdown(summary, args.representative, command)
    (args.out / "study.md").write_text(table)
    print(table)
    print(json.dumps({d: {"true_order": s["true_order"], "tau_vs_representative": s["tau_vs_representative"],
                          "tau_predicted_vs_full": s["tau_predicted_vs_full"]["mean"],
                          "cost_fraction": s["cost_fraction"]["mean"]} for d, s in summary.items()}))


if __name__ == "__main__":
    main()
