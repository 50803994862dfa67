"""Series -> what training needs: covariates, a chronological split (DCRNN's by sample, or T-GCN's by
time step), a leak-free scaler.

Nothing here copies the series: covariates are T-long vectors (broadcast over sensors only when a batch
is cut), the split is a set of window start indices, and the scaler is fitted by streaming over the
training range in chunks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from stgnn_launch.data.series import Series
from stgnn_launch.errors import UserError

_DAY_NS = 86_400 * 10**9
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Scaler:
    """Per-feature z-score; statistics from observed training readings only."""

    mean: torch.Tensor  # F
    std: torch.Tensor  # F

    def transform(self, values: torch.Tensor) -> torch.Tensor:
        return (values - self.mean.to(values.device)) / self.std.to(values.device)

    def inverse(self, values: torch.Tensor, features: int | None = None) -> torch.Tensor:
        """De-normalize the first `features` features (all by default)."""
        f = values.shape[-1] if features is None else features
        return values * self.std[:f].to(values.device) + self.mean[:f].to(values.device)


def time_covariates(timestamps: np.ndarray, day_of_week: bool) -> torch.Tensor:
    """T x C float32: time-of-day as a fraction of the day (DCRNN), then day-of-week / 7 if asked."""
    ns = np.asarray(timestamps).astype("datetime64[ns]").view(np.int64)
    day_ns = ns % _DAY_NS
    columns = [day_ns / _DAY_NS]
    if day_of_week:
        days = ns // _DAY_NS
        columns.append(((days + 3) % 7) / 7.0)  # 1970-01-01 was a Thursday; Monday = 0
    return torch.from_numpy(np.stack(columns, axis=1).astype(np.float32))


def steps_per_day(step: np.timedelta64) -> int:
    ns = int(np.timedelta64(step, "ns").astype(np.int64))
    if ns <= 0 or _DAY_NS % ns:
        raise UserError(f"series step: expected a positive step that divides a day, found {step}")
    return _DAY_NS // ns


def split_starts(num_steps: int, window: int, horizon: int, stride: int,
                 train_ratio: float, test_ratio: float) -> dict[str, np.ndarray]:
    """Window start indices per split, in time order, counted by sample as DCRNN does.

    n = (T - (W + H)) // stride + 1 samples; test = round(test_ratio n), train = round(train_ratio n),
    val = the rest. Python's round (half to even) is what DCRNN's generate_training_data uses.
    """
    span = window + horizon
    if num_steps < span:
        raise UserError(f"series length: expected at least window + horizon = {span} steps, found {num_steps}")
    n = (num_steps - span) // stride + 1
    num_test = round(n * test_ratio)
    num_train = round(n * train_ratio)
    num_val = n - num_test - num_train
    if min(num_train, num_val, num_test) < 1:
        raise UserError(
            f"split of {n} windows: expected at least one window in each of train/val/test, found "
            f"train={num_train} val={num_val} test={num_test} (use a longer series or other ratios)"
        )
    starts = np.arange(n, dtype=np.int64) * stride
    return {
        "train": starts[:num_train],
        "val": starts[num_train:num_train + num_val],
        "test": starts[num_train + num_val:],
    }


def split_starts_tgcn(num_steps: int, window: int, horizon: int, stride: int,
                      test_ratio: float, val_ratio_of_train: float) -> dict[str, np.ndarray]:
    """Window start indices per split, T-GCN's way: the TIME STEPS are cut, then windows inside each part.

    T-GCN (Zhao et al. 2019, `preprocess_data`) keeps the first int((1 - test_ratio) T) steps for
    training and the rest for testing, and cuts samples inside each part, so that no window crosses
    the boundary. Model selection needs a validation part that is not the test: here it is the last
    round(val_ratio_of_train * train_steps) steps of the training part, cut the same way. Every part
    yields (part_steps - (W + H)) // stride + 1 windows (T-GCN's loop drops the last one; we keep it).
    """
    span = window + horizon
    train_steps = int(num_steps * (1.0 - test_ratio) + 1e-9)  # T-GCN: int(time_len * rate)
    val_steps = round(train_steps * val_ratio_of_train)
    bounds = {"train": (0, train_steps - val_steps), "val": (train_steps - val_steps, train_steps),
              "test": (train_steps, num_steps)}
    starts = {split: np.arange(lo, hi - span + 1, stride, dtype=np.int64) for split, (lo, hi) in bounds.items()}
    if min(len(v) for v in starts.values()) < 1:
        sizes = ", ".join(f"{k}={hi - lo} steps" for k, (lo, hi) in bounds.items())
        raise UserError(f"tgcn split of {num_steps} steps: expected at least window + horizon = {span} steps in "
                        f"each of train/val/test, found {sizes} (use a longer series or other ratios)")
    return starts


def scaler_sums(values: torch.Tensor, start: int, stop: int, null_value: float,
                chunk_steps: int = 4096) -> torch.Tensor:
    """3 x F float64: sum, sum of squares and count of the observed readings in steps [start, stop).

    Chunk by chunk, so that a year of PeMS needs no full-size temporary; sums (not means) so that ranks
    holding different time ranges can add theirs up."""
    sums = torch.zeros(3, values.shape[-1], dtype=torch.float64)
    for first in range(start, stop, chunk_steps):
        block = values[first:min(stop, first + chunk_steps)].to(torch.float64)
        observed = ~torch.isnan(block) & (block != null_value)
        block = torch.where(observed, block, 0.0)
        sums += torch.stack([block.sum(dim=(0, 1)), (block * block).sum(dim=(0, 1)), observed.sum(dim=(0, 1))])
    return sums


def scaler_from_sums(sums: torch.Tensor) -> Scaler:
    total, total_sq, count = sums
    if bool((count < 2).any()):
        raise UserError(f"scaler: expected observed (non-missing) readings in the training range of every "
                        f"feature, found counts {count.tolist()}")
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(0.0).sqrt()
    std = torch.where(std > 0, std, torch.ones_like(std))  # a constant feature must not divide by zero
    return Scaler(mean.to(torch.float32), std.to(torch.float32))


def fit_scaler(values: torch.Tensor, stop: int, null_value: float, chunk_steps: int = 4096) -> Scaler:
    """Mean and std per feature over steps [0, stop), skipping NaN and null readings."""
    return scaler_from_sums(scaler_sums(values, 0, stop, null_value, chunk_steps))


def fill_missing(values: torch.Tensor, null_value: float) -> None:
    """NaN readings become the null value, in place, so that one marker means 'missing' everywhere.

    Looks before it writes: a series shared by a node's ranks is then written by its creator only."""
    if bool(torch.isnan(values).any()):
        values.nan_to_num_(nan=null_value)


@dataclass
class Prepared:
    """Everything the batching strategies draw from: the series once, plus small side tables."""

    values: torch.Tensor  # T x N x F raw readings (missing = null_value)
    covariates: torch.Tensor  # T x C
    scaler: Scaler
    starts: dict[str, np.ndarray]
    window: int
    horizon: int
    out_features: int
    null_value: float
    steps_per_day: int

    @property
    def in_features(self) -> int:
        return self.values.shape[-1] + self.covariates.shape[-1]

    @property
    def tod_channel(self) -> int:
        return self.values.shape[-1]

    def slots(self, start: int, stop: int) -> torch.Tensor:
        """Time-of-day slot of steps [start, stop), from the time-of-day covariate."""
        frac = self.covariates[start:stop, 0].to(torch.float64)
        return (frac * self.steps_per_day).round().long() % self.steps_per_day


SPLIT_PROTOCOLS = ("dcrnn", "tgcn")


def window_starts(num_steps: int, *, window: int, horizon: int, stride: int, train_ratio: float,
                  test_ratio: float, split: str = "dcrnn", val_ratio_of_train: float = 0.2) -> dict[str, np.ndarray]:
    """Window starts per split under the chosen protocol (see split_starts and split_starts_tgcn)."""
    if split == "dcrnn":
        return split_starts(num_steps, window, horizon, stride, train_ratio, test_ratio)
    if split == "tgcn":
        return split_starts_tgcn(num_steps, window, horizon, stride, test_ratio, val_ratio_of_train)
    raise UserError(f"dataset.split: expected one of {', '.join(SPLIT_PROTOCOLS)}, found {split!r}")


def prepare(series: Series, *, window: int, horizon: int, stride: int, train_ratio: float,
            test_ratio: float, null_value: float, day_of_week: bool, out_features: int = 1,
            split: str = "dcrnn", val_ratio_of_train: float = 0.2) -> Prepared:
    """`split`: "dcrnn" (by sample, train_ratio / test_ratio / the rest) or "tgcn" (by time step,
    test_ratio at the end, validation = the last val_ratio_of_train of the rest; train_ratio unused)."""
    starts = window_starts(series.num_steps, window=window, horizon=horizon, stride=stride,
                           train_ratio=train_ratio, test_ratio=test_ratio, split=split,
                           val_ratio_of_train=val_ratio_of_train)
    fill_missing(series.values, null_value)
    train_input_stop = int(starts["train"][-1]) + window  # scaler sees the training inputs only
    return Prepared(
        values=series.values,
        covariates=time_covariates(series.timestamps, day_of_week),
        scaler=fit_scaler(series.values, train_input_stop, null_value),
        starts=starts,
        window=window,
        horizon=horizon,
        out_features=out_features,
        null_value=null_value,
        steps_per_day=steps_per_day(series.step),
    )
