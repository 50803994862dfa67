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
    summary = summarize(runs, args.representative)
    command = "python benchmarks/profile_study.py " + " ".join(sys.argv[1:])
    (args.out / "study.json").write_text(json.dumps({"command": command, "datasets": summary}, indent=1) + "\n")
    table = markdown(summary, args.representative, command)
    (args.out / "study.md").write_text(table)
    print(table)
    print(json.dumps({d: {"true_order": s["true_order"], "tau_vs_representative": s["tau_vs_representative"],
                          "tau_predicted_vs_full": s["tau_predicted_vs_full"]["mean"],
                          "cost_fraction": s["cost_fraction"]["mean"]} for d, s in summary.items()}))


if __name__ == "__main__":
    main()
