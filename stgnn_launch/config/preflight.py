"""Checks made before anything is read or written: `model.params` against the model's constructor, and
the run directory (a Hydra callback, since Hydra creates it before our code runs).

A misspelt hyperparameter or a value of the wrong type would otherwise be found only when the model is
built, after the series is loaded, split and scaled (minutes on a large set, and after a Slurm job
waited in the queue). Built-in models declare their hyperparameters as typed keyword arguments, which
is all this needs. `model=custom` and `model=pyg_recurrent` take classes by import path, which are
checked where they are imported (models/custom.py, models/pyg_recurrent.py).
"""

from __future__ import annotations

import inspect
import sys
import tempfile
import types
import typing
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

from stgnn_launch.errors import UserError

BY_IMPORT_PATH = ("custom", "pyg_recurrent")
_SIMPLE = (bool, int, float, str)


def check_model_params(name: str, params: dict[str, Any]) -> None:
    """UserError naming `model.params.<key>` for an unknown key or a value of the wrong simple type."""
    if name in BY_IMPORT_PATH:
        return
    from stgnn_launch.models.registry import model_class

    init = model_class(name).__init__
    parameters = list(inspect.signature(init).parameters.values())[2:]  # past self and spec
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return  # takes anything: the constructor decides
    accepted = {p.name: p for p in parameters if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    hints = _hints(init)
    for key, value in params.items():
        if key not in accepted:
            names = ", ".join(sorted(accepted)) or "none"
            raise UserError(f"model.params.{key}: expected one of the hyperparameters of model={name} ({names}), "
                            f"found an unknown key")
        allowed = _simple_types(hints.get(key), accepted[key].default)
        if allowed and not _fits(value, allowed):
            expected = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
            raise UserError(f"model.params.{key}: expected {expected} (model={name}), found {value!r}")


def _hints(init: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(init)
    except Exception:  # an annotation that does not evaluate here: fall back to the defaults' types
        return {}


def _simple_types(hint: Any, default: Any) -> tuple[type, ...]:
    """The simple types a hint allows (int, float, bool, str, None), or () when it is anything else."""
    if hint is None:
        return (type(default),) if type(default) in _SIMPLE else ()
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if all(o in _SIMPLE or o is type(None) for o in options):
        return tuple(options)
    return ()


def _fits(value: Any, allowed: tuple[type, ...]) -> bool:
    if value is None:
        return type(None) in allowed
    if isinstance(value, bool):  # a bool is an int to Python, never a count or a rate here
        return bool in allowed
    if isinstance(value, int) and float in allowed:
        return True  # 1 for 1.0
    return any(isinstance(value, t) for t in allowed if t is not type(None))


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
