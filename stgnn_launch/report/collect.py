"""Find the runs under some directories and read what each left behind.

A run directory holds `config.yaml` from its start, then `results.json` (finished) or `failed.json`
(failed); with neither it is running (or died without a record). A Slurm sweep also writes `sweep.json`
listing its points (stgnn_launch/launch/sweep.py): a point whose directory does not exist yet, whose
job is not submitted yet (job_id null) or whose job has no log yet (queued) is pending. Nothing here
raises on a broken run: it becomes a failed one.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from stgnn_launch.errors import UserError

DONE, FAILED, RUNNING, PENDING = "done", "failed", "running", "pending"
from stgnn_launch.rundir import CONFIG, RESULTS, RUN_FILES, ResultsRecord, read_results  # noqa: E402
from stgnn_launch.rundir import FAILED as FAILED_FILE  # noqa: E402
from stgnn_launch.rundir import SWEEP as SWEEP_FILE  # noqa: E402
SKIP_DIRS = {"checkpoints", "slurm", "__pycache__"}  # never hold runs; dot-folders (.hydra) are skipped too


@dataclass
class Run:
    run_dir: Path
    status: str
    config: dict[str, Any] = field(default_factory=dict)  # nested, as in config.yaml / results["config"]
    results: ResultsRecord | None = None
    error: str | None = None
    job_id: str | None = None
    overrides: list[str] = field(default_factory=list)


def read_run(run_dir: Path) -> Run:
    """One run directory's status, config and results; unreadable files make it a failed run."""
    results_path, failed_path = run_dir / RESULTS, run_dir / FAILED_FILE
    try:
        config = _read_yaml(run_dir / CONFIG) if (run_dir / CONFIG).is_file() else {}
    except (OSError, yaml.YAMLError) as err:
        return Run(run_dir, FAILED, error=f"unreadable config.yaml: {err}")
    # A run resumed after a failure may hold both; the newer file tells how it ended.
    if results_path.is_file() and not (failed_path.is_file() and _newer(failed_path, results_path)):
        try:
            results = read_results(run_dir)
        except (OSError, ValueError, TypeError) as err:  # TypeError: JSON, but not a run record
            return Run(run_dir, FAILED, config, error=f"unreadable {RESULTS}: {err}")
        return Run(run_dir, DONE, results.config or config, results)
    if failed_path.is_file():
        try:
            failure = json.loads(failed_path.read_text())
            error = str(failure.get("error", failure)) if isinstance(failure, dict) else str(failure)
        except (OSError, ValueError) as err:
            error = f"unreadable failed.json: {err}"
        return Run(run_dir, FAILED, config, error=error)
    return Run(run_dir, RUNNING, config)


def collect_runs(dirs: list[Path]) -> list[Run]:
    """Every run under `dirs` (each a run, a sweep or any folder above them), sweep points included."""
    runs: dict[Path, Run] = {}
    for top in dirs:
        if not top.is_dir():
            raise UserError(f"{top}: expected a run or sweep directory, found no such directory")
        for run_dir in _run_dirs(top):
            runs.setdefault(run_dir.resolve(), read_run(run_dir))
        for sweep_file in sorted(top.rglob(SWEEP_FILE)):
            for run in _sweep_points(sweep_file):  # the same read, plus the sweep's job and status
                runs[run.run_dir.resolve()] = run
    return list(runs.values())


def _run_dirs(top: Path) -> list[Path]:
    found = []
    for here, subdirs, files in os.walk(top):
        if any(name in files for name in RUN_FILES):
            found.append(Path(here))
            subdirs.clear()  # a run's own folders hold no runs
            continue
        subdirs[:] = sorted(d for d in subdirs if not d.startswith(".") and d not in SKIP_DIRS)
    return found


def _sweep_points(sweep_file: Path) -> list[Run]:
    """The points a sweep.json lists: read where their directory exists, pending where it does not."""
    try:
        points = json.loads(sweep_file.read_text())["points"]
        if not isinstance(points, list):
            raise TypeError(type(points).__name__)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{sweep_file}: expected JSON with a list 'points', found {err!r}") from None
    runs = []
    for i, point in enumerate(points):
        if not isinstance(point, dict) or "run_dir" not in point:
            raise UserError(f"{sweep_file}: points[{i}]: expected an object with run_dir, found {point!r}")
        run_dir = _resolve(Path(point["run_dir"]), sweep_file.parent)
        if any((run_dir / name).is_file() for name in RUN_FILES):
            run = read_run(run_dir)
        else:
            run = Run(run_dir, PENDING)
        run.job_id = None if point.get("job_id") is None else str(point["job_id"])
        run.overrides = [str(o) for o in point.get("overrides") or []]
        logs = [Path(str(log)) for log in point.get("logs") or []]
        if run.status == RUNNING and (run.job_id is None or logs and not any(log.exists() for log in logs)):
            run.status = PENDING  # written, but not submitted yet, or queued: its job has no log yet
        runs.append(run)
    return runs


def _resolve(run_dir: Path, sweep_dir: Path) -> Path:
    """A relative run_dir is the sweep folder's, or else the submitting directory's (here)."""
    if run_dir.is_absolute():
        return run_dir
    inside = sweep_dir / run_dir
    return inside if inside.exists() or not run_dir.exists() else run_dir


def _newer(a: Path, b: Path) -> bool:
    return a.stat().st_mtime > b.stat().st_mtime


def _read_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    return data if isinstance(data, dict) else {}
