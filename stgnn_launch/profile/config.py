"""The `profile` config group (conf/profile/) and the candidate list, checked like every other group."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

from stgnn_launch.errors import UserError


def _check(ok: bool, key: str, expected: str, found: Any) -> None:
    if not ok:
        raise UserError(f"{key}: expected {expected}, found {found!r}")


CURVES = ("auto", "inverse_power", "exponential")
METHODS = ("curve", "halving")


@dataclass(kw_only=True)
class ProfileConfig:
    """How much to spend per candidate, and what to compare the prediction with."""

    full_epochs: int = 20  # the full training's epoch limit (early stopping by trainer.patience ends it sooner)
    epochs_fraction: float = 0.2  # profiling epochs = ceil(epochs_fraction * full_epochs) ...
    min_epochs: int = 4  # ... but at least this many (a 3-parameter curve with an uncertainty needs 4 points)
    max_epochs: Optional[int] = None  # ... and at most this many, when set
    train_fraction: float = 0.5  # share of the training windows seen per profiling epoch (max_batches_per_epoch)
    budget: Optional[float] = None  # shorthand: the share of full training to spend; sets epochs_fraction
    curve: str = "auto"  # auto (the better fit of both, per model) | inverse_power | exponential
    method: str = "curve"  # curve (extrapolate each short curve) | halving (successive halving, profile/halving.py)
    eta: int = 2  # halving: each rung keeps the best ceil(1/eta) of the candidates
    full: bool = False  # also train every candidate to convergence and compare the orders (Kendall's tau)
    reference: Optional[str] = None  # a dataset option (e.g. losloop): full training there, tau vs the target
    reference_overrides: list[str] = field(default_factory=list)  # extra overrides for the reference runs
    out_dir: Optional[str] = None  # where the study goes; None = runs/profile/<time>_<dataset>

    def __post_init__(self) -> None:
        _check(self.full_epochs >= 1, "profile.full_epochs", "a positive number of epochs", self.full_epochs)
        _check(0 < self.epochs_fraction <= 1, "profile.epochs_fraction", "a fraction in (0, 1]", self.epochs_fraction)
        _check(self.min_epochs >= 1, "profile.min_epochs", "a positive number of epochs", self.min_epochs)
        _check(self.max_epochs is None or self.max_epochs >= 1, "profile.max_epochs",
               "a positive number of epochs or null", self.max_epochs)
        _check(0 < self.train_fraction <= 1, "profile.train_fraction", "a fraction in (0, 1]", self.train_fraction)
        _check(self.budget is None or 0 < self.budget <= 1, "profile.budget", "a fraction in (0, 1] or null",
               self.budget)
        _check(self.curve in CURVES, "profile.curve", " | ".join(CURVES), self.curve)
        _check(self.method in METHODS, "profile.method", " | ".join(METHODS), self.method)
        _check(self.eta >= 2, "profile.eta", "an integer of at least 2", self.eta)

    def profile_epochs(self) -> int:
        fraction = self.epochs_fraction if self.budget is None else min(1.0, self.budget / self.train_fraction)
        epochs = max(self.min_epochs, math.ceil(fraction * self.full_epochs - 1e-9))
        if self.max_epochs is not None:
            epochs = min(epochs, self.max_epochs)
        return min(epochs, self.full_epochs)


@dataclass(kw_only=True)
class StudyConfig:
    """stgnn-profile's own keys; every other override goes to the training config (conf/config.yaml).

    models: built-in names (tgcn), import paths of the user's classes (my_pkg.models:MyNet), or
    {name, label, params, overrides} for a candidate with its own hyperparameters or presets."""

    models: list[Any] = field(default_factory=lambda: ["persistence", "tgcn", "gwnet"])
    profile: ProfileConfig = field(default_factory=ProfileConfig)


def register_profile_configs() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="profile_schema", node=StudyConfig)
