"""`model.params` against the model's constructor, checked before anything is read.

A misspelt hyperparameter or a value of the wrong type would otherwise be found only when the model is
built, after the series is loaded, split and scaled (minutes on a large set, and after a Slurm job
waited in the queue). Built-in models declare their hyperparameters as typed keyword arguments, which
is all this needs. `model=custom` and `model=pyg_recurrent` take classes by import path, which are
checked where they are imported (models/custom.py, models/pyg_recurrent.py).
"""

from __future__ import annotations

import inspect
import types
import typing
from typing import Any

from stgnn_launch.errors import UserError
from stgnn_launch.models.registry import model_class

BY_IMPORT_PATH = ("custom", "pyg_recurrent")
_SIMPLE = (bool, int, float, str)


def check_model_params(name: str, params: dict[str, Any]) -> None:
    """UserError naming `model.params.<key>` for an unknown key or a value of the wrong simple type."""
    if name in BY_IMPORT_PATH:
        return
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
