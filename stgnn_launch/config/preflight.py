"""A check made before anything is written: the run directory (a Hydra callback, since Hydra creates it
before our code runs). The model's hyperparameters are checked in models/params.py."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf


class CheckRunDir(Callback):
    """Registered in conf/config.yaml (hydra.callbacks): a run (or sweep) directory that cannot be created
    or written stops the launch with one line, before Hydra's own attempt ends in a traceback."""

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        _writable_or_exit(config, "hydra.run.dir")
        if OmegaConf.select(config, "hydra.output_subdir") is not None:  # stgnn-plan writes no directory
            _held_or_exit(Path(str(OmegaConf.select(config, "hydra.run.dir"))))

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        _writable_or_exit(config, "hydra.sweep.dir")


def _held_or_exit(run_dir: Path) -> None:
    """The run directory's lock, taken before Hydra writes its .hydra/ files there: a directory another live
    run holds is left exactly as it is (stgnn_launch/run_lock.py)."""
    from stgnn_launch import run_lock

    try:
        run_lock.hold(run_dir, inheritable=True)
    except run_lock.RunDirBusy as err:
        print(f"stgnn-train: error: {err}", file=sys.stderr)
        sys.exit(2)


def _writable_or_exit(config: Any, key: str) -> None:
    # Creating it here is what Hydra does next anyway (its ${now:} resolver is cached: the same path).
    path = Path(str(OmegaConf.select(config, key)))
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        print(f"stgnn-train: error: {key}: expected a directory that can be created and written, found "
              f"{path} ({err.strerror or err})", file=sys.stderr)
        sys.exit(2)  # SystemExit passes Hydra's error report, which would print a traceback
