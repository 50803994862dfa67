"""Name -> model class. Each model module registers itself; `build_model` looks it up.

The contract every model honours:
    model = Cls(spec, **hparams)                    # hparams come from conf/model/<name>.yaml
    y_hat = model(x, targets=None)                  # x: B x W x N x F_in -> y_hat: B x H x N x F_out
x holds, per node and step, the z-scored measured features (first `spec.out_features` channels are the
targets' features) followed by the covariates (time-of-day fraction, then day-of-week if enabled).
Predictions are in the z-scored space; the trainer de-normalizes them before any loss or metric.
`targets` (B x H x N x F_out, z-scored) is given only while training, for teacher forcing.
Models with `trainable = False` (baselines) are fitted once by `fit(train_values, train_observed, train_slots)`:
z-scored T_train x N x F_out values, a bool mask of the same shape (True = a real reading) and the
time-of-day slot (0 .. steps_per_day - 1) of each training step.
A user's own class joins through `model=custom model.target=module:Class` (models/custom.py), a PyG-style
recurrent graph cell through `model=pyg_recurrent model.cell=module.Class` (models/pyg_recurrent.py).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from dataclasses import dataclass
from typing import Callable

import numpy as np
from torch import nn

from stgnn_launch.data.graph import SparseGraph, as_sparse_graph
from stgnn_launch.errors import UserError

_MODELS: dict[str, type[nn.Module]] = {}


@dataclass(frozen=True)
class ModelSpec:
    """What the data tells a model about its inputs and outputs."""

    num_nodes: int
    in_features: int  # F_in: measured features + covariates
    out_features: int  # F_out: predicted features (the first F_out measured ones)
    window: int  # W input steps
    horizon: int  # H output steps
    graph: SparseGraph  # weighted edge list, row = source sensor (a dense N x N array given here is converted)
    steps_per_day: int  # e.g. 288 for 5-minute data
    tod_channel: int  # index in x's last axis of the time-of-day fraction covariate

    def __post_init__(self) -> None:
        object.__setattr__(self, "graph", as_sparse_graph(self.graph))

    @property
    def adjacency(self) -> np.ndarray:
        """The graph as a dense N x N float32 matrix, built on each call (498 MB at 11,160 sensors:
        prefer `graph`, or `graph.edge_index()` for PyG layers)."""
        return self.graph.dense()


def register(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    def add(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} registered twice")
        _MODELS[name] = cls
        return cls

    return add


def _import_all() -> None:
    """Import every module of this package so that their @register lines run."""
    package = importlib.import_module("stgnn_launch.models")
    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"stgnn_launch.models.{info.name}")


def available_models() -> list[str]:
    """The models that build from the spec and their defaults alone: every registered one but `custom`,
    which needs model.target (model_class("custom") still finds it)."""
    _import_all()
    return sorted(name for name, cls in _MODELS.items() if _builds_from_defaults(cls))


def _builds_from_defaults(cls: type[nn.Module]) -> bool:
    params = list(inspect.signature(cls).parameters.values())[1:]  # past spec
    return all(p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params)


def model_class(name: str) -> type[nn.Module]:
    _import_all()
    if name not in _MODELS:
        raise UserError(f"model.name: expected one of {', '.join(sorted(_MODELS))}, found {name!r}")
    return _MODELS[name]


def build_model(name: str, spec: ModelSpec, hparams: dict) -> nn.Module:
    cls = model_class(name)
    try:  # checked on the signature, so that a TypeError inside a constructor still shows as what it is
        inspect.signature(cls).bind(spec, **hparams)
    except TypeError as err:
        raise UserError(f"model {name}: hyperparameters {sorted(hparams)} do not fit: {err}") from None
    return cls(spec, **hparams)
