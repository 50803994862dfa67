"""report.csv (one row per run, raw numbers) and report.md (mean ± std over seeds, readable units)."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from stgnn_launch.report.collect import DONE, FAILED, PENDING, RUNNING
from stgnn_launch.report.table import CSV_COLUMNS, HORIZONS, Group

MiB = 2**20


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else _csv_value(row[k]) for k in CSV_COLUMNS})


def _csv_value(value: Any) -> Any:
    return repr(value) if isinstance(value, float) else value  # repr: every digit, no rounding


def mean_std(group: Group, column: str, decimals: int | None = None, scale: float = 1.0) -> str:
    """"mean ± std" over the group's finished runs; `decimals` None shows 4 significant digits,
    and the std is shown to the mean's last digit."""
    mean, std = group.stat(column)
    if mean is None:
        return ""
    mean /= scale
    if decimals is None:
        magnitude = math.floor(math.log10(abs(mean))) if mean else 0
        decimals = max(0, 3 - magnitude)
    text = f"{mean:.{decimals}f}"
    return text if std is None else f"{text} ± {std / scale:.{decimals}f}"


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(cells) + " |" for cells in body), ""]


def _ids(group: Group, with_variant: bool) -> list[str]:
    dataset, model, batching, variant = group.line
    cells = [str(dataset), str(model), str(batching)]
    if with_variant:
        cells.append(variant or "")
    done, total = len(group.done), len(group.rows)
    cells += ["" if group.gpus is None else str(group.gpus), f"{done}/{total}"]
    return cells


def write_markdown(groups: list[Group], rows: list[dict[str, Any]], baselines: dict[str, dict[str, Any]],
                   plots: dict[str, str | None], sources: list[Path], epoch_time: str, path: Path) -> None:
    counts = {s: sum(r["status"] == s for r in rows) for s in (DONE, FAILED, RUNNING, PENDING)}
    with_variant = any(g.line[3] for g in groups)
    id_header = ["dataset", "model", "batching", *(["variant"] if with_variant else []), "GPUs", "runs done"]
    chosen = "median" if epoch_time == "median" else "fastest"
    lines = [
        "# Scaling report", "",
        "Runs under " + ", ".join(f"`{s}`" for s in sources) + f": {len(rows)} in all, "
        + ", ".join(f"{n} {s}" for s, n in counts.items()) + ".", "",
        f"* **Epoch time**: the {chosen} training time (validation excluded) of a run's epochs after the first "
        "(the first, which carries the warm-up, only when it is the only one); samples/s and the time split "
        "are medians over the same epochs.",
        "* **Speedup**: mean epoch time at the smallest GPU count of the same dataset, model, batching (and "
        "variant) with a finished run, divided by this run's; **efficiency**: speedup / (GPUs / that count).",
        "* Each cell is the mean ± standard deviation over the finished seeds (no ± with one); "
        "failed, running and pending runs count in *runs done* only.", "",
    ]
    if any(r["status"] == DONE and (r.get("epochs") or 0) < 2 for r in rows):
        lines += ["Some runs trained one epoch only: their epoch time includes the warm-up.", ""]
    lines += ["## Throughput", ""]
    lines += _table(id_header + ["epoch time (s)", "samples/s", "speedup", "efficiency"],
                    [_ids(g, with_variant) + [mean_std(g, "epoch_time_s"), mean_std(g, "samples_per_s"),
                                              mean_std(g, "speedup", 3), mean_std(g, "efficiency", 3)]
                     for g in groups])
    lines += _memory_section(groups, id_header, with_variant)
    lines += ["## Epoch time split (s)", "", "Blank where the runs did not record it.", ""]
    split = [("epoch_time_s", "epoch"), ("data_wait_s", "data wait"), ("compute_s", "forward+backward"),
             ("allreduce_s", "gradient all-reduce"), ("eval_s", "evaluation"), ("data_wait_fraction", "data wait share")]
    lines += _table(id_header + [h for _, h in split],
                    [_ids(g, with_variant) + [mean_std(g, c) for c, _ in split] for g in groups])
    lines += ["## Test accuracy", "", "Masked MAE / RMSE / MAPE (%) at horizons 3, 6, 12 and averaged over all 12.", ""]
    lines += _table(id_header + [f"{m} @{h}" for h in HORIZONS for m in ("MAE", "RMSE", "MAPE")],
                    [_ids(g, with_variant) + [mean_std(g, f"test_{m}_{h}", 3) for h in HORIZONS
                                              for m in ("mae", "rmse", "mape_pct")] for g in groups])
    if baselines:
        lines += ["### Baselines on the test split", ""]
        body = [[dataset, name] + [_metric(metrics, h, m) for h in HORIZONS for m in ("mae", "rmse", "mape")]
                for dataset, by_name in baselines.items() for name, metrics in by_name.items()]
        lines += _table(["dataset", "baseline"] + [f"{m} @{h}" for h in HORIZONS for m in ("MAE", "RMSE", "MAPE")], body)
    lines += _unfinished_section(rows)
    lines += ["## Plots", ""]
    for name, why_not in plots.items():
        title = name.removesuffix(".png").replace("_", " ")
        lines += [f"![{title}]({name})" if why_not is None else f"*{title}*: not drawn, {why_not}.", ""]
    path.write_text("\n".join(lines))


def _memory_section(groups: list[Group], id_header: list[str], with_variant: bool) -> list[str]:
    """The memory table: data, series and peaks, host and GPU, per rank and per node (columns with numbers)."""
    lines = ["## Memory (MiB)", "", "Data: the series or materialized windows held; per node counts node-shared "
             "pages once. Peak: resident set size; GPU peak: the caching allocator's (max_memory_allocated), beside "
             "what it reserved.", ""]
    memory = [("data_bytes_per_rank", "data / rank"), ("data_bytes_per_node", "data / node"),
              ("series_bytes_per_rank", "series / rank"), ("series_bytes_per_node", "series / node"),
              ("peak_rss_bytes_per_rank", "peak / rank"), ("peak_rss_bytes_per_node", "peak / node"),
              ("device_peak_bytes_per_rank", "GPU peak / rank"), ("device_reserved_bytes_per_rank", "GPU reserved / rank")]
    memory = [(c, h) for c, h in memory if any(g.stat(c)[0] is not None for g in groups)]
    return lines + _table(id_header + [h for _, h in memory],
                          [_ids(g, with_variant) + [mean_std(g, c, 1, MiB) for c, _ in memory] for g in groups])


def _unfinished_section(rows: list[dict[str, Any]]) -> list[str]:
    """Failed, running and pending runs, with why where known."""
    unfinished = [r for r in rows if r["status"] != DONE]
    if not unfinished:
        return []
    lines = ["## Runs without results", "",
             "*running*: config.yaml but neither results.json nor failed.json (still running, or died "
             "without a record); *pending*: a sweep point not started: no directory yet, its job not submitted, "
             "or queued (its job has no log yet).", ""]
    return lines + _table(["status", "dataset", "model", "batching", "GPUs", "seed", "job", "run directory", "error"],
                          [[r["status"], *(str(r[k] if r[k] is not None else "") for k in
                                           ("dataset", "model", "batching", "gpus", "seed", "job_id")),
                            f"`{r['run_dir']}`", _one_line(r["error"])] for r in unfinished])


def _metric(metrics: dict[str, Any], horizon: str, name: str) -> str:
    value = (metrics.get(horizon) or {}).get(name)
    if not isinstance(value, (int, float)):
        return ""
    return f"{100 * value:.3f}" if name == "mape" else f"{value:.3f}"


def _one_line(text: str | None, limit: int = 200) -> str:
    if not text:
        return ""
    flat = " ".join(str(text).split()).replace("|", "\\|")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
