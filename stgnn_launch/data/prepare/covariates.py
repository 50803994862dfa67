"""Calendar covariates, only where they mean something.

Time of day (DCRNN's fraction of the day) is a covariate for steps shorter than a day; a weekly or daily
series (chickenpox cases) gets none unless asked. Day of week (Monday = 0, as a fraction of the week) is
an option for steps shorter than a week.
"""

from __future__ import annotations

import numpy as np
import torch

from stgnn_launch.errors import UserError

_DAY_NS = 86_400 * 10**9
_WEEK_NS = 7 * _DAY_NS


def step_ns(step: np.timedelta64) -> int:
    return int(np.timedelta64(step, "ns").astype(np.int64))


def steps_per_day(step: np.timedelta64) -> int | None:
    """Steps in a day when the step divides a day (288 for 5 minutes), else None (a weekly series)."""
    ns = step_ns(step)
    if ns <= 0:
        raise UserError(f"series step: expected timestamps that increase, found a step of {step}")
    return _DAY_NS // ns if ns < _DAY_NS and _DAY_NS % ns == 0 else None


def use_time_of_day(choice: str, step: np.timedelta64) -> bool:
    """dataset.covariates: auto = time of day for sub-daily steps only; time_of_day asks for it."""
    sub_daily = 0 < step_ns(step) < _DAY_NS
    if choice == "time_of_day" and not sub_daily:
        raise UserError(f"dataset.covariates: expected auto or none for a series whose step is a day or longer "
                        f"(time of day is then constant), found time_of_day with a step of {step}")
    return sub_daily if choice == "auto" else choice == "time_of_day"


def time_covariates(timestamps: np.ndarray, time_of_day: bool = True, day_of_week: bool = False) -> torch.Tensor:
    """T x C float32: time of day as a fraction of the day (DCRNN) if asked, then day of week / 7 if asked."""
    ns = np.asarray(timestamps).astype("datetime64[ns]").view(np.int64)
    columns = []
    if time_of_day:
        columns.append((ns % _DAY_NS) / _DAY_NS)
    if day_of_week:
        days = ns // _DAY_NS
        columns.append(((days + 3) % 7) / 7.0)  # 1970-01-01 was a Thursday; Monday = 0
    if not columns:
        return torch.zeros(len(ns), 0)
    return torch.from_numpy(np.stack(columns, axis=1).astype(np.float32))


def check_day_of_week(day_of_week: bool, step: np.timedelta64) -> None:
    if day_of_week and step_ns(step) >= _WEEK_NS:
        raise UserError(f"dataset.day_of_week: expected false for a series whose step is a week or longer "
                        f"(the day of week is then constant), found true with a step of {step}")
