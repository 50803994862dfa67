"""Run training configs through the project's launcher and collect their results.json.

launcher=local: one after another, in this process (or under torchrun when gpus > 1);
launcher=slurm: every run of a phase is submitted at once as a sweep (launch/sweep.py), then followed to its end.
A run directory that already holds a finished run of the same config is reused, not rerun: a profile that
ended with its allocation (or a Ctrl-C) continues where it stopped when started again with the same
profile.out_dir. A run of the same config that stopped part way resumes from its last checkpoint; its cost
(results.json wall_time_s) is then the wall time of all its attempts up to their last checkpoints."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from stgnn_launch.config.load import RUN_CONFIG, load_run_config, save_run_config
from stgnn_launch.config.schema import Config
from stgnn_launch.errors import UserError
from stgnn_launch.train import checkpoint
from stgnn_launch import rundir
from stgnn_launch.rundir import FAILED, RESULTS, ResultsRecord


def run_all(jobs: list[tuple[Config, Path]]) -> list[ResultsRecord]:
    to_run = []
    for cfg, run_dir in jobs:
        cfg.run_dir = str(run_dir)
        if finished(cfg, run_dir):
            print(f"stgnn-profile: reusing the finished run in {run_dir}", flush=True)
            continue
        run_dir.mkdir(parents=True, exist_ok=True)
        resumable = stopped_part_way(cfg, run_dir)
        for stale in (RESULTS, FAILED):  # a different config's results must not be read as this run's
            (run_dir / stale).unlink(missing_ok=True)
        if resumable:
            print(f"stgnn-profile: resuming the unfinished run in {run_dir} from its last checkpoint", flush=True)
        cfg.trainer.resume = resumable
        save_run_config(cfg, run_dir)
        to_run.append((cfg, run_dir))
    if to_run and to_run[0][0].launcher.name == "slurm":
        _slurm_sweep(to_run)
    else:
        for cfg, run_dir in to_run:
            _run_local(cfg, run_dir)
    return [read_results(run_dir) for _, run_dir in jobs]


def finished(cfg: Config, run_dir: Path) -> bool:
    """Whether run_dir holds a run of exactly this config that wrote its results."""
    if not (run_dir / RESULTS).is_file() or (run_dir / FAILED).is_file():
        return False
    return same_config(cfg, run_dir)


def stopped_part_way(cfg: Config, run_dir: Path) -> bool:
    """Whether run_dir holds a run of this config that was stopped (not failed) after a checkpoint."""
    last = checkpoint.checkpoint_dir(run_dir) / checkpoint.LAST
    return last.is_file() and not (run_dir / FAILED).is_file() and same_config(cfg, run_dir)


def same_config(cfg: Config, run_dir: Path) -> bool:
    """run_dir's config.yaml is cfg, up to trainer.resume (how a run was started, not which run it is)."""
    if not (run_dir / RUN_CONFIG).is_file():
        return False
    try:
        saved = load_run_config(run_dir)
    except UserError:  # a config.yaml this version no longer accepts is not this run's
        return False
    return _fresh(saved) == _fresh(cfg)


def _fresh(cfg: Config) -> Config:
    return dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, resume=False))


def read_results(run_dir: Path) -> ResultsRecord:
    path = run_dir / RESULTS
    if not path.is_file():
        raise UserError(f"profile run {run_dir}: expected {RESULTS} at its end, found none (see its log)")
    try:
        return rundir.read_results(run_dir)
    except (OSError, ValueError, TypeError) as err:
        raise UserError(f"profile run {run_dir}: expected a readable {RESULTS}, found {err}") from None


def _run_local(cfg: Config, run_dir: Path) -> None:
    from stgnn_launch.distributed.context import in_torchrun

    if cfg.gpus > 1 and not in_torchrun():
        from stgnn_launch.launch.local import run_torchrun_locally

        if run_torchrun_locally(cfg, run_dir):
            raise UserError(f"profile run {run_dir}: expected torchrun to finish, found it failed (see above)")
        return
    from stgnn_launch.train.run import run_training

    run_training(cfg, run_dir)


def _slurm_sweep(jobs: list[tuple[Config, Path]]) -> None:
    """Every run as one point of a Slurm sweep (launch/sweep.py: one job each, or a job array with
    launcher.array_parallelism), followed to the end: the study needs their results."""
    from stgnn_launch.launch.sweep import Point, Sweep, submit_sweep

    if jobs[0][0].launcher.dry_run:
        raise UserError("launcher.dry_run: expected false for stgnn-profile (it needs the runs' results), found true")
    points = []
    for num, (cfg, run_dir) in enumerate(jobs):
        cfg.launcher.wait = True
        points.append(Point(num, [run_dir.name], run_dir.resolve(), cfg))
    if submit_sweep(Sweep(dir=jobs[0][1].parent.resolve(), job_name="stgnn_profile", points=points)):
        raise UserError(f"launcher=slurm: expected every profile run in {jobs[0][1].parent} to finish, "
                        "found some failed (see the states above)")
