"""`stgnn-train`: compose the config with Hydra, validate it, then train here, under torchrun, or on Slurm."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from stgnn_launch import run_lock, rundir
from stgnn_launch.cli.entry import Exit, run_command, start_hydra_app
from stgnn_launch.config import paths
from stgnn_launch.config.load import save_run_config, to_config
from stgnn_launch.config.resume import check_resume
from stgnn_launch.distributed.context import in_torchrun
from stgnn_launch.errors import disk_full, is_disk_full
from stgnn_launch.launch import sweep
from stgnn_launch.models.params import check_model_params
from stgnn_launch.train.preemption import PREEMPTED_EXIT, Preempted

PROG = "stgnn-train"
CONF_DIR = str(paths.CONF_DIR)  # stgnn_launch/conf: in the wheel too


def launch(cfg: DictConfig) -> int:
    config = to_config(cfg)
    check_model_params(config.model.name, dict(config.model.params))  # before any data is read
    if not in_torchrun():  # the launcher's check, once, before any data is read (ranks skip it)
        from stgnn_launch.cli.memory_check import checked_estimate
        from stgnn_launch.planning.fit import settle_batch_size

        settle_batch_size(config, checked_estimate(config))
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    config.run_dir = str(run_dir)
    if sweep.is_slurm_sweep(config):  # -m: submitted with the others once every point is checked
        return sweep.add_point(config, run_dir)
    if config.launcher.name == "slurm" and config.launcher.dry_run:
        from stgnn_launch.launch.slurm_submit import dry_run

        code = dry_run(config, run_dir)
        discard_if_empty(run_dir)  # a dry run leaves nothing behind
        return code
    run_lock.hold(run_dir, inheritable=True)  # before anything is written; torchrun inherits it at its exec
    check_resume(config, run_dir)  # a resume that would invalidate the checkpoint: refused, nothing written
    save_run_config(config, run_dir)
    if config.launcher.name == "slurm":
        from stgnn_launch.launch.slurm_submit import submit

        run_lock.release(run_dir)  # the job's rank 0 holds it from its start (this process may wait for the job)
        return submit(config, run_dir)
    if config.gpus > 1 and not in_torchrun():
        from stgnn_launch.launch.local import run_torchrun_locally

        # One run: torchrun replaces this process. A local sweep (-m) runs its points one after another here.
        return run_torchrun_locally(config, run_dir, replace_process=HydraConfig.get().mode == RunMode.RUN)
    from stgnn_launch.train.run import run_training

    try:
        run_training(config, run_dir)
    finally:
        run_lock.release(run_dir)  # a local sweep runs its points one after another in this process
    return 0


def discard_if_empty(run_dir: Path) -> None:
    """A run refused before it started leaves no directory behind (Hydra creates it up front; config.yaml
    is written before a Slurm submission, which sbatch or the pre-submission checks may still refuse)."""
    hydra_only = {".hydra", f"{HydraConfig.get().job.name}.log", rundir.CONFIG, rundir.LOCK}
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= hydra_only:
        shutil.rmtree(run_dir, ignore_errors=True)
        run_lock.release(run_dir)


def _launch_or_exit(cfg: DictConfig) -> int:
    """launch(), a preempted run and a full disk turned into their one line and status."""
    try:
        return launch(cfg)
    except Preempted as stop:
        raise Exit(f"{stop}; continue it with trainer.resume=true", PREEMPTED_EXIT) from None
    except OSError as err:  # a full disk where no writer said so itself: still one line (failed.json is written)
        if not is_disk_full(err):
            raise
        raise Exit(f"error: {disk_full(err.filename or 'a file', None, err)}", 2) from None


def _refused(err: BaseException) -> None:
    """After a refusal: no empty run directory left behind, and a bad point refuses the whole sweep."""
    if not getattr(err, "keep_run_dir", False):  # another live run's directory, or a run's to resume
        discard_if_empty(Path(HydraConfig.get().runtime.output_dir))
    sweep.abandon()


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def _app(cfg: DictConfig) -> None:
    # Ctrl-C: the run directory holds failed.json if training had started
    code = run_command(PROG, lambda: _launch_or_exit(cfg), on_error=_refused)
    if code:
        sys.exit(code)


def main() -> None:
    start_hydra_app(PROG, _app)


if __name__ == "__main__":
    main()
