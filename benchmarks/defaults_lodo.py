"""Do the defaults hold on data they were not chosen on? A leave-one-dataset-out check (issue 23).

Each rule is a set of overrides applied to `stgnn-train dataset=X` (nothing else: the dataset's file, window,
horizon and MAPE threshold, none of its training settings). Every rule runs on every dataset at every seed;
then, for each held-out dataset, the rule is chosen on the OTHER datasets alone (most (dataset, seed) pairs
where it beats both baselines on test MAE; ties: the lowest mean ratio of its test MAE to the better
baseline's) and its result on the held-out dataset is reported. The rule `defaults` adds no override: it is
what a user who says nothing gets.

    python benchmarks/defaults_lodo.py --out /work/lodo                 # every rule, dataset and seed
    python benchmarks/defaults_lodo.py --out /work/lodo --collect       # the tables from finished runs

Runs already finished in --out are reused (a rerun completes a stopped study). Two runs at a time, one torch
thread each (--jobs, --threads). `max_epochs=auto` ends on a wall-time budget: on a loaded machine fewer
epochs fit, so the load is part of the result (note it beside the table). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
DATASETS = {  # name -> the file that must exist (None: generated)
    "synthetic": None,
    "losloop": DATA / "los-loop" / "los_speed.csv",
    "chickenpox": DATA / "chickenpox" / "chickenpox.json",
    "montevideo_bus": DATA / "montevideo-bus" / "montevideo_bus.json",
}
RULES = {
    # What a user who says nothing gets: T-GCN on the fitted baseline, max_epochs=auto (5 min, synthetic 1).
    "defaults": [],
    # The same epochs rule on the bare network: what the fitted baseline contributes.
    "bare_auto": ["model.base=none"],
    # The defaults before issue 23: 2 epochs of the bare network (the per-dataset batches and epochs that
    # were chosen on Los-loop, chickenpox and the bus are left out: they would not be a rule).
    "before": ["model.base=none", "trainer.max_epochs=2"],
}


def run_one(out: Path, rule: str, dataset: str, seed: int, threads: int) -> dict:
    run_dir = out / rule / dataset / f"seed{seed}"
    results = run_dir / "results.json"
    if not results.is_file():
        cmd = [sys.executable, "-m", "stgnn_launch.cli.train", *([] if dataset == "synthetic" else [f"dataset={dataset}"]),
               f"trainer.seed={seed}", "trainer.progress=false", f"trainer.num_threads={threads}",
               f"hydra.run.dir={run_dir}", *RULES[rule]]
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir.parent / f"seed{seed}.log", "w") as log:
            done = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            raise SystemExit(f"{rule}/{dataset}/seed{seed}: stgnn-train exited {done.returncode} (see its log)")
    return summarize(json.loads(results.read_text()))


def summarize(record: dict) -> dict:
    base = {name: m["avg"]["mae"] for name, m in record["baselines"].items()}
    mae = record["test"]["avg"]["mae"]
    best_base = min(base.values())
    return {"mae": mae, "baselines": base, "beats_both": all(mae < b for b in base.values()),
            "ratio": mae / best_base, "epochs": len(record["epochs"]), "best_epoch": record.get("best_epoch"),
            "wall_s": record.get("wall_time_s")}


def choose(results: dict, rules: list[str], datasets: list[str]) -> str:
    """The rule with the most (dataset, seed) wins over both baselines on `datasets`; ties: lowest mean ratio."""
    def score(rule: str) -> tuple[int, float]:
        cells = [r for d in datasets for r in results[rule][d].values()]
        return (-sum(c["beats_both"] for c in cells), sum(c["ratio"] for c in cells) / len(cells))
    return min(rules, key=score)


def tables(results: dict, rules: list[str], datasets: list[str], seeds: list[int]) -> tuple[str, dict]:
    lines = ["| held-out dataset | rule chosen on the others | test MAE seed " + " / ".join(map(str, seeds))
             + " | persistence | historical average | beats both |", "|---|---|---|---:|---:|---|"]
    lodo = {}
    for held in datasets:
        rule = choose(results, rules, [d for d in datasets if d != held])
        cells = [results[rule][held][s] for s in seeds]
        base = cells[0]["baselines"]
        lodo[held] = {"rule": rule, "mae": [c["mae"] for c in cells], "baselines": base,
                      "beats_both": all(c["beats_both"] for c in cells)}
        lines.append(f"| {held} | {rule} | " + " / ".join(f"{c['mae']:.4f}" for c in cells)
                     + f" | {base.get('persistence', float('nan')):.4f} | "
                     + (f"{base['historical_average']:.4f}" if "historical_average" in base else "– (weekly step)")
                     + f" | {'yes' if lodo[held]['beats_both'] else 'no'} |")
    lines += ["", "| rule | " + " | ".join(datasets) + " |", "|---|" + "---|" * len(datasets)]
    for rule in rules:
        lines.append(f"| {rule} | " + " | ".join(
            " / ".join(f"{results[rule][d][s]['mae']:.4f}{'' if results[rule][d][s]['beats_both'] else '*'}"
                       f" ({results[rule][d][s]['epochs']} ep)" for s in seeds) for d in datasets) + " |")
    return "\n".join(lines), lodo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--rules", default=",".join(RULES))
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--collect", action="store_true", help="only tabulate finished runs")
    args = ap.parse_args()
    rules = args.rules.split(",")
    datasets = [d for d in args.datasets.split(",") if DATASETS[d] is None or DATASETS[d].is_file()]
    skipped = sorted(set(args.datasets.split(",")) - set(datasets))
    if skipped:
        print(f"skipping {', '.join(skipped)}: its file is not in {DATA}", file=sys.stderr)
    jobs = [(r, d, s) for r in rules for d in datasets for s in args.seeds]
    if args.collect:
        jobs = [j for j in jobs if (args.out / j[0] / j[1] / f"seed{j[2]}" / "results.json").is_file()]
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    with ThreadPoolExecutor(args.jobs) as pool:
        done = list(pool.map(lambda j: (j, run_one(args.out, *j, args.threads)), jobs))
    results: dict = {r: {d: {} for d in datasets} for r in rules}
    for (r, d, s), summary in done:
        results[r][d][s] = summary
    complete = all(len(results[r][d]) == len(args.seeds) for r in rules for d in datasets)
    if complete:
        text, lodo = tables(results, rules, datasets, args.seeds)
        print(text)
        (args.out / "lodo.md").write_text(text + "\n")
    else:
        lodo = None
    print(json.dumps({"results": results, "lodo": lodo}))


if __name__ == "__main__":
    main()
