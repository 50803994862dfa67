"""Series -> what training needs: a chronological split, a leak-free scaler, covariates.

Nothing here copies the series: covariates are T-long vectors (broadcast over sensors only on the
device, per batch), the split is a set of window start indices, and the scaler is fitted by streaming
over the training inputs in chunks. `prepare` takes everything it decides from one `PrepareSpec`
(built once from the config by the run's plan) and may be handed a split and a scaler computed
elsewhere (a time shard's local starts and the all-reduced scaler, a node's shared statistics).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from stgnn_launch.data.prepare.covariates import (check_day_of_week, steps_per_day, time_covariates,
                                                  use_time_of_day)
from stgnn_launch.data.prepare.missing import fill_missing, observed
from stgnn_launch.data.prepare.scaler import Scaler, fit_scaler, scaler_from_sums, scaler_sums
from stgnn_launch.data.prepare.split import (SPLITS, input_ranges, split_starts, split_starts_tgcn,
                                             window_starts)
from stgnn_launch.data.series import Series

__all__ = ["PrepareSpec", "Prepared", "Scaler", "SPLITS", "fill_missing", "fit_scaler", "input_ranges",
           "observed", "prepare", "scaler_from_sums", "scaler_sums", "split_starts", "split_starts_tgcn",
           "steps_per_day", "time_covariates", "training_scaler_sums", "window_starts"]


@dataclass(frozen=True, kw_only=True)
class PrepareSpec:
    """How a series becomes windows: every choice `prepare` makes, decided once from the config."""

    window: int = 12
    horizon: int = 12
    stride: int = 1
    split: str = "dcrnn"
    train_ratio: float = 0.7
    test_ratio: float = 0.2
    val_ratio_of_train: float = 0.2
    null_value: float | None = 0.0
    covariates: str = "auto"  # auto | time_of_day | none
    day_of_week: bool = False
    out_features: int = 1

    def starts(self, num_steps: int) -> dict[str, np.ndarray]:
        return window_starts(num_steps, window=self.window, horizon=self.horizon, stride=self.stride,
                             train_ratio=self.train_ratio, test_ratio=self.test_ratio, split=self.split,
                             val_ratio_of_train=self.val_ratio_of_train)


@dataclass(frozen=True)
class Prepared:
    """Everything the batching strategies draw from: the series once, plus small side tables."""

    values: torch.Tensor  # T x N x F readings as resident (missing = null value, or NaN without one)
    covariates: torch.Tensor  # T x C float32
    scaler: Scaler
    starts: dict[str, np.ndarray]
    window: int
    horizon: int
    out_features: int
    null_value: float | None
    steps_per_day: int | None  # None: the step does not divide a day (no time-of-day slots)
    has_time_of_day: bool = True

    @property
    def num_features(self) -> int:
        return self.values.shape[-1]

    @property
    def in_features(self) -> int:
        return self.values.shape[-1] + self.covariates.shape[-1]

    @property
    def tod_channel(self) -> int | None:
        """Index in the model input's last axis of the time-of-day covariate, None without one."""
        return self.values.shape[-1] if self.has_time_of_day else None

    @property
    def has_slots(self) -> bool:
        """Whether steps have a time-of-day slot: a step dividing a day, and the time-of-day covariate."""
        return self.steps_per_day is not None and self.has_time_of_day

    def slots(self, start: int, stop: int) -> torch.Tensor:
        """Time-of-day slot of steps [start, stop), from the time-of-day covariate."""
        frac = self.covariates[start:stop, 0].to(torch.float64)
        return (frac * self.steps_per_day).round().long() % self.steps_per_day

    def with_values(self, values: torch.Tensor) -> "Prepared":
        return replace(self, values=values)


def training_scaler_sums(values: torch.Tensor, starts_train: np.ndarray, window: int,
                         null_value: float | None) -> torch.Tensor:
    """The scaler's sums over the training windows' inputs (see `input_ranges`)."""
    return scaler_sums(values, input_ranges(starts_train, window), null_value)


def prepare(series: Series, spec: PrepareSpec, *, starts: dict[str, np.ndarray] | None = None,
            scaler: Scaler | None = None) -> Prepared:
    """Split, scaler and covariates of `series`. `starts` and `scaler`, when given, were decided
    elsewhere (a time shard's local starts and the global scaler; a node's shared statistics).

    Missing readings must already be filled (`fill_missing`, once, where the series is loaded)."""
    starts = spec.starts(series.num_steps) if starts is None else starts
    step = series.step
    tod = use_time_of_day(spec.covariates, step)
    check_day_of_week(spec.day_of_week, step)
    if scaler is None:
        scaler = scaler_from_sums(training_scaler_sums(series.values, starts["train"], spec.window,
                                                       spec.null_value))
    return Prepared(
        values=series.values,
        covariates=time_covariates(series.timestamps, tod, spec.day_of_week),
        scaler=scaler,
        starts=starts,
        window=spec.window,
        horizon=spec.horizon,
        out_features=spec.out_features,
        null_value=spec.null_value,
        steps_per_day=steps_per_day(step),
        has_time_of_day=tod,
    )
