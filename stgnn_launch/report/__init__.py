"""`stgnn-report`: scaling tables and plots from the runs of a study.

collect (find and read run directories and sweep points) -> table (one row per run, groups of seeds,
speedup and efficiency) -> report.csv, report.md and PNG plots in one folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stgnn_launch.errors import UserError
from stgnn_launch.report.collect import DONE, Run, collect_runs
from stgnn_launch.report.table import EPOCH_TIME_CHOICES, build_rows, group_rows


@dataclass
class Report:
    csv: Path
    markdown: Path
    plots: list[Path]  # the PNGs drawn
    rows: list[dict[str, Any]]


def build_report(dirs: list[Path], out_dir: Path, epoch_time: str = "median") -> Report:
    """Collect every run under `dirs` and write report.csv, report.md and the plots into `out_dir`."""
    from stgnn_launch.report.plots import draw_plots  # matplotlib only once there is something to draw
    from stgnn_launch.report.write import write_csv, write_markdown

    if epoch_time not in EPOCH_TIME_CHOICES:
        raise UserError(f"epoch time: expected one of {', '.join(EPOCH_TIME_CHOICES)}, found {epoch_time!r}")
    runs = collect_runs(dirs)
    if not runs:
        raise UserError(f"{', '.join(map(str, dirs))}: expected run directories (config.yaml, results.json) "
                        "or a sweep.json somewhere below, found none")
    rows = build_rows(runs, epoch_time)
    groups = group_rows(rows)
    baselines = collect_baselines(runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = draw_plots(groups, baselines, out_dir)
    csv_path, md_path = out_dir / "report.csv", out_dir / "report.md"
    write_csv(rows, csv_path)
    write_markdown(groups, rows, baselines, plots, dirs, epoch_time, md_path)
    return Report(csv_path, md_path, [out_dir / name for name, why_not in plots.items() if why_not is None], rows)


def collect_baselines(runs: list[Run]) -> dict[str, dict[str, Any]]:
    """dataset -> {baseline name -> test metrics}, from the first finished run of each dataset with them."""
    found: dict[str, dict[str, Any]] = {}
    for run in runs:
        baselines = run.results.baselines if run.status == DONE and run.results else None
        dataset = str((run.config.get("dataset") or {}).get("name"))
        if isinstance(baselines, dict) and baselines and dataset not in found:
            found[dataset] = {name: m for name, m in baselines.items() if isinstance(m, dict)}
    return found
