"""Sweeps on Slurm: `stgnn-train -m ... launcher=slurm` submits every point and returns at once.

Hydra's BasicLauncher runs the points in this process, one after another. For launcher=slurm each
point's run only checks its config and is collected here (`add_point`); nothing is submitted until
Hydra has gone through every point, so a bad point refuses the whole sweep. Then `SubmitSlurmSweep`
(a Hydra callback, on_multirun_end) writes each point's config.yaml, submits one job per point, or one
job array with launcher.array_parallelism, and keeps `<sweep dir>/sweep.json` truthful throughout:
written before the first submission (no job ids yet) and rewritten after each one.

Not Hydra's submitit launcher plugin: its job re-enters the Hydra app on the node and checks a point
only once it runs there, whereas ours is one task per node running torchrun with its own requeue
(`TorchrunJob`), and every point is checked before anything is submitted.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from stgnn_launch.atomic_write import replacing
from stgnn_launch.config.schema import Config
from stgnn_launch.errors import UserError

from stgnn_launch.rundir import SWEEP as MANIFEST, read_results  # noqa: E402
# Keys that decide how the sweep is submitted: every point must agree on them.
SWEEP_KEYS = ("wait", "dry_run", "array_parallelism")
# Keys that decide a job's resources (its sbatch options): the tasks of one job array share them.
RESOURCE_KEYS = ("gpus", "launcher.gpus_per_node", "launcher.cpu", "launcher.partition", "launcher.account",
                 "launcher.qos", "launcher.time_min", "launcher.mem_gb", "launcher.cpus_per_task",
                 "launcher.constraint", "launcher.setup", "launcher.sbatch_extra", "launcher.signal_delay_s")


@dataclass
class Point:
    """One point of the sweep: Hydra's job number, its overrides, its run directory and config."""

    num: int
    overrides: list[str]
    run_dir: Path
    config: Config
    job_id: str | None = None  # None until it is submitted
    logs: list[str] = field(default_factory=list)  # stdout, stderr of the job's first task

    def entry(self) -> dict[str, Any]:
        return {"num": self.num, "overrides": self.overrides, "run_dir": str(self.run_dir), "job_id": self.job_id,
                "logs": self.logs}


@dataclass
class Sweep:
    dir: Path | None = None
    job_name: str = ""  # Hydra's job name: its log file in a run directory is <job_name>.log
    points: list[Point] = field(default_factory=list)


_pending = Sweep()  # this process's sweep, filled by add_point while Hydra goes through the points


def is_slurm_sweep(config: Config) -> bool:
    """A point of a multirun (-m) to submit to Slurm (prepare_only still writes its run dir at once)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    launcher = config.launcher
    return launcher.name == "slurm" and not launcher.prepare_only and HydraConfig.get().mode == RunMode.MULTIRUN


def add_point(config: Config, run_dir: Path) -> int:
    """Keep a checked point for submission at the end of the sweep."""
    from hydra.core.hydra_config import HydraConfig

    hydra = HydraConfig.get()
    _pending.dir = Path(hydra.sweep.dir).resolve()
    _pending.job_name = hydra.job.name
    _pending.points.append(Point(hydra.job.num, list(hydra.overrides.task), run_dir.resolve(), config))
    return 0


def abandon() -> None:
    """A point was refused: nothing is submitted, and nothing of the sweep stays behind."""
    discard(_pending)
    _pending.points.clear()


def discard(sweep: Sweep) -> None:
    """Remove the directories Hydra made for the points (while they hold nothing but Hydra's own files),
    and the sweep directory where that empties it."""
    for point in sweep.points:
        _remove_if_only(point.run_dir, {".hydra", f"{sweep.job_name}.log"})
    if sweep.dir is not None and sweep.points:
        _remove_if_only(sweep.dir, {"multirun.yaml"})


def _remove_if_only(folder: Path, names: set[str]) -> None:
    if folder.is_dir() and {p.name for p in folder.iterdir()} <= names:
        shutil.rmtree(folder, ignore_errors=True)


class SubmitSlurmSweep(Callback):
    """Registered in conf/config.yaml (hydra.callbacks): submits the collected points after the last."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        if not _pending.points:
            return
        try:
            code = submit_sweep(_pending)
        except UserError as err:
            print(f"stgnn-train: error: {err}", file=sys.stderr)
            discard(_pending)  # what was not yet written (a refused sweep leaves nothing behind)
            sys.exit(2)
        finally:
            _pending.points.clear()
        if code:
            sys.exit(code)


# ---- the manifest -------------------------------------------------------------------------------------


def write_manifest(sweep_dir: Path, created: str, points: list[Point], array: dict[str, Any] | None = None) -> Path:
    """`<sweep dir>/sweep.json`, replaced whole: the points, their run dirs and job ids (null: not submitted),
    and for a job array its id (null until submitted) and parallelism."""
    manifest: dict[str, Any] = {"created": created, "points": [p.entry() for p in points]}
    if array is not None:
        manifest.update(array)
    path = sweep_dir / MANIFEST
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def read_manifest(sweep_dir: str | Path) -> dict[str, Any]:
    """The manifest of a sweep directory (what stgnn-report reads)."""
    path = Path(sweep_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"sweep directory {sweep_dir}: expected {MANIFEST} written by stgnn-train -m "
                        "launcher=slurm, found none") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: expected JSON, found a parse error ({err})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("points"), list):
        raise UserError(f"{path}: expected an object with a list of points, found {type(manifest).__name__}")
    return manifest


# ---- submission ---------------------------------------------------------------------------------------


def _value(config: Config, key: str) -> Any:
    obj: Any = config
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def check_points(points: list[Point]) -> None:
    """Refuse a sweep whose points disagree on how it is submitted, or, as one job array, on resources."""
    first = points[0]
    keys = [f"launcher.{k}" for k in SWEEP_KEYS]
    if first.config.launcher.array_parallelism is not None:
        keys += RESOURCE_KEYS
    for key in keys:
        for point in points[1:]:
            a, b = _value(first.config, key), _value(point.config, key)
            if a != b:
                why = (f"at every task of one job array (launcher.array_parallelism={first.config.launcher.array_parallelism}; "
                       "without it every point is a job of its own)" if key in RESOURCE_KEYS else "at every point of a sweep")
                raise UserError(f"{key}: expected the same value {why}, found {a!r} at point {first.num} and "
                                f"{b!r} at point {point.num}")


def submit_sweep(sweep: Sweep) -> int:
    """Submit every point (their configs are checked), print the job ids, follow them if asked."""
    from stgnn_launch.config.load import save_run_config
    from stgnn_launch.launch import slurm_submit

    sweep_dir, points = sweep.dir, sweep.points
    assert sweep_dir is not None
    check_points(points)
    launcher = points[0].config.launcher
    parallelism = launcher.array_parallelism
    as_array = parallelism is not None and len(points) > 1
    if launcher.dry_run:
        return dry_run(sweep, parallelism if as_array else None)
    for point in points:
        save_run_config(point.config, point.run_dir)
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    array = {"array_job_id": None, "array_parallelism": parallelism} if as_array else None
    manifest = write_manifest(sweep_dir, created, points, array)
    jobs = []
    if as_array:
        params = {**slurm_submit.slurm_parameters(points[0].config), "job_name": "stgnn-sweep",
                  "array_parallelism": parallelism}
        jobs = slurm_submit.submit_jobs(sweep_dir / "slurm" / "%j", params,
                                        [slurm_submit.job_for(p.config, p.run_dir) for p in points])
        for point, job in zip(points, jobs):
            point.job_id, point.logs = job.job_id, _logs(job)
        array["array_job_id"] = jobs[0].job_id.split("_")[0]
        write_manifest(sweep_dir, created, points, array)
    else:
        for point in points:
            try:
                params = slurm_submit.slurm_parameters(point.config)
                [job] = slurm_submit.submit_jobs(point.run_dir / "slurm" / "%j", params,
                                                 [slurm_submit.job_for(point.config, point.run_dir)])
            except UserError as err:
                done = [p.job_id for p in points if p.job_id]
                raise UserError(f"{err} (point {point.num}); {len(done)} of {len(points)} points were submitted "
                                f"before it ({', '.join(done) or 'none'}), as {manifest} records") from None
            point.job_id, point.logs = job.job_id, _logs(job)
            jobs.append(job)
            write_manifest(sweep_dir, created, points, array)
    print_submitted(sweep, manifest, array)
    if not launcher.wait:
        return 0
    return wait_for_sweep(points, jobs)


def _logs(job) -> list[str]:
    paths = job.task(0).paths
    return [str(paths.stdout), str(paths.stderr)]


def _shape(config: Config) -> str:
    return f"{config.gpus // config.launcher.gpus_per_node} x {config.launcher.gpus_per_node}"


def print_submitted(sweep: Sweep, manifest: Path, array: dict[str, Any] | None) -> None:
    points = sweep.points
    if array:
        print(f"submitted Slurm job array {array['array_job_id']}: {len(points)} tasks, at most "
              f"{array['array_parallelism']} running at once", flush=True)
    else:
        print(f"submitted {len(points)} Slurm jobs", flush=True)
    width = max(len("job id"), *(len(p.job_id or "") for p in points))
    print(f"  {'#':>3}  {'job id':<{width}}  nodes x ranks  run dir")
    for p in points:
        print(f"  {p.num:>3}  {p.job_id:<{width}}  {_shape(p.config):<13}  {p.run_dir}")
    logs = f"{sweep.dir}/slurm" if array else "<run dir>/slurm"
    print(f"  logs:     {logs}/<job id>/<job id>_0_log.out|err\n  manifest: {manifest}", flush=True)


def wait_for_sweep(points: list[Point], jobs: list) -> int:
    """launcher.wait=true: follow every job to its end, then print each point's state and test MAE."""
    from stgnn_launch.launch.slurm_watch import JobWatch, watch_until_over

    watches = [JobWatch(job, f" (point {p.num})") for p, job in zip(points, jobs)]
    try:
        watch_until_over(watches)
    except KeyboardInterrupt:
        ids = " ".join(p.job_id or "" for p in points)
        print(f"\nstopped following; the sweep's jobs go on (scancel {ids} stops them)")
        return 130
    failed = 0
    rows = []
    for point, watch in zip(points, watches):
        why = watch.failure()
        if why:
            failed += 1
            print(f"{watch.name} {why}\n  logs: {point.logs[0]}\n        {point.logs[1]}")
        rows.append((point, "COMPLETED" if why is None else (watch.state or watch.job.state), _test_mae(point)))
    print(f"sweep finished: {len(points) - failed} of {len(points)} points completed")
    print(f"  {'#':>3}  {'state':<12}  {'test MAE':>8}  run dir")
    for point, state, mae in rows:
        print(f"  {point.num:>3}  {state.split()[0]:<12}  {'-' if mae is None else f'{mae:.4f}':>8}  {point.run_dir}")
    return 1 if failed else 0


def _test_mae(point: Point) -> float | None:
    """The point's average test MAE from its results.json, or None where there is none."""
    try:
        return float(read_results(point.run_dir).test["avg"]["mae"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def dry_run(sweep: Sweep, parallelism: int | None) -> int:
    """Print what would be submitted; submit nothing and leave no directory behind."""
    from stgnn_launch.launch import slurm_submit

    points = sweep.points
    how = (f"one job array of {len(points)} tasks, at most {parallelism} running at once" if parallelism
           else f"{len(points)} jobs, one per point")
    print(f"dry run: a sweep of {len(points)} points as {how}; nothing submitted")
    print(f"  {'#':>3}  nodes x ranks  overrides")
    for p in points:
        print(f"  {p.num:>3}  {_shape(p.config):<13}  {' '.join(p.overrides)}")
    params = slurm_submit.slurm_parameters(points[0].config)
    if parallelism:
        params.update(job_name="stgnn-sweep", array_parallelism=parallelism, map_count=len(points))
        print("---- batch script of the array ----")
        print(slurm_submit.batch_script(params, sweep.dir / "slurm" / "%j"))
    else:
        print(f"---- batch script of point {points[0].num} (each point's asks for its own resources) ----")
        print(slurm_submit.batch_script(params, points[0].run_dir / "slurm" / "%j"))
    discard(sweep)
    return 0
