"""The run directory's layout: every file a run writes and a tool reads back, named here and nowhere else.

    <run dir>/config.yaml        the resolved, validated config every rank, stgnn-eval and a resume read
             results.json       the run record (a finished run)
             failed.json        the error of a run that stopped (instead of results.json)
             train.log          everything rank 0 printed
             metrics.csv        one row per finished epoch
             predictions.npz    trainer.save_predictions=true (predictions_<split>.npz from stgnn-eval)
             checkpoints/       last.pt (every epoch, step checkpoints too) and best.pt
             .run.lock          the flock that keeps one run per directory
    <sweep dir>/sweep.json       a Slurm sweep's manifest (points, run directories, job ids)
"""

from __future__ import annotations

from pathlib import Path

CONFIG = "config.yaml"
RESULTS = "results.json"
FAILED = "failed.json"
LOG = "train.log"
METRICS = "metrics.csv"
PREDICTIONS = "predictions.npz"
CHECKPOINTS = "checkpoints"
LAST = "last.pt"
BEST = "best.pt"
LOCK = ".run.lock"
SWEEP = "sweep.json"
RUN_FILES = (CONFIG, RESULTS, FAILED)  # any of them marks a folder as a run directory


def checkpoints(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINTS


def last_checkpoint(run_dir: Path) -> Path:
    return checkpoints(run_dir) / LAST


def best_checkpoint(run_dir: Path) -> Path:
    return checkpoints(run_dir) / BEST


def predictions(run_dir: Path, split: str | None = None) -> Path:
    """predictions.npz of a training run, predictions_<split>.npz of stgnn-eval."""
    return Path(run_dir) / (PREDICTIONS if split is None else f"predictions_{split}.npz")
