import numpy as np
import pytest
import torch

from helpers import random_series
from stgnn_launch.data.prepare import PrepareSpec, fill_missing, fit_scaler, prepare, split_starts, steps_per_day, time_covariates
from stgnn_launch.errors import UserError


def test_split_counts_follow_dcrnn():
    # METR-LA: 34,272 steps -> 34,249 samples -> 23,974 / 3,425 / 6,850 (DCRNN's published split sizes)
    starts = split_starts(34272, 12, 12, 1, 0.7, 0.2)
    assert [len(starts[k]) for k in ("train", "val", "test")] == [23974, 3425, 6850]
    # PEMS-BAY: 52,116 steps -> 36,465 / 5,209 / 10,419
    starts = split_starts(52116, 12, 12, 1, 0.7, 0.2)
    assert [len(starts[k]) for k in ("train", "val", "test")] == [36465, 5209, 10419]
    all_starts = np.concatenate([starts["train"], starts["val"], starts["test"]])
    assert np.array_equal(all_starts, np.arange(52116 - 23))  # in time order, no gap, no overlap


def test_split_with_stride_and_errors():
    starts = split_starts(100, 4, 2, 3, 0.7, 0.2)
    n = (100 - 6) // 3 + 1
    assert sum(len(v) for v in starts.values()) == n
    assert np.all(np.diff(np.concatenate(list(starts.values()))) == 3)
    with pytest.raises(UserError, match="at least batching.window \\+ batching.horizon = 24 steps, found 20"):
        split_starts(20, 12, 12, 1, 0.7, 0.2)
    with pytest.raises(UserError, match="at least one window in each"):
        split_starts(25, 12, 12, 1, 0.7, 0.2)


def test_scaler_uses_training_inputs_only_and_skips_missing():
    series = random_series(steps=1000, nodes=5)
    values = series.values.clone()
    values[0, 0, 0] = float("nan")
    scaler = fit_scaler(values, 300, null_value=0.0, chunk_steps=64)
    head = values[:300].double().numpy()
    observed = head[~np.isnan(head) & (head != 0)]
    assert scaler.mean.item() == pytest.approx(observed.mean(), abs=1e-4)
    assert scaler.std.item() == pytest.approx(observed.std(), abs=1e-4)
    # a spike after the training range must not move the statistics (no leakage)
    values[600:] = 1000.0
    assert torch.equal(fit_scaler(values, 300, 0.0).mean, scaler.mean)


def test_prepare_fits_scaler_on_training_inputs():
    series = random_series(steps=500, nodes=4)
    series.values[400:] += 500  # test range shifted far away
    prepared = prepare(series, PrepareSpec(day_of_week=True))
    stop = int(prepared.starts["train"][-1]) + 12
    head = prepared.values[:stop].numpy()
    assert prepared.scaler.mean.item() == pytest.approx(head[head != 0].mean(), abs=1e-3)
    assert prepared.in_features == 3 and prepared.tod_channel == 1 and prepared.steps_per_day == 288


def test_time_covariates():
    ts = np.array(["2012-03-01T00:00", "2012-03-01T06:00", "2012-03-04T23:55"], dtype="datetime64[ns]")
    cov = time_covariates(ts, time_of_day=True, day_of_week=True).numpy()
    assert cov[:, 0] == pytest.approx([0.0, 0.25, 1435 / 1440])
    assert cov[:, 1] == pytest.approx([3 / 7, 3 / 7, 6 / 7])  # 2012-03-01 was a Thursday, 03-04 a Sunday
    assert steps_per_day(np.timedelta64(5, "m")) == 288
    assert steps_per_day(np.timedelta64(7, "m")) is None  # no time-of-day slots, still a valid series
    assert steps_per_day(np.timedelta64(7, "D")) is None


def test_weekly_series_gets_no_time_of_day_and_daily_covariate_is_refused():
    from stgnn_launch.data.series import Series, regular_timestamps

    weekly = random_series(steps=300, nodes=3)
    weekly = Series(weekly.values, regular_timestamps("2005-01-03T00:00", "7d", 300), weekly.sensor_ids,
                    weekly.adjacency)
    prepared = prepare(weekly, PrepareSpec(window=4, horizon=1))
    assert prepared.covariates.shape == (300, 0) and prepared.tod_channel is None
    assert prepared.in_features == 1 and prepared.steps_per_day is None
    with pytest.raises(UserError, match="dataset.covariates: expected auto or none"):
        prepare(weekly, PrepareSpec(window=4, horizon=1, covariates="time_of_day"))
    with pytest.raises(UserError, match="dataset.day_of_week: expected false"):
        prepare(weekly, PrepareSpec(window=4, horizon=1, day_of_week=True))


def test_nothing_missing_keeps_zeros_and_negatives_as_readings():
    series = random_series(steps=400, nodes=3, missing=0.3)  # many zeros: real counts here
    series.values[5, 0, 0] = -3.0
    prepared = prepare(series, PrepareSpec(null_value=None))
    stop = int(prepared.starts["train"][-1]) + 12
    head = series.values[:stop].double()
    assert prepared.scaler.mean.item() == pytest.approx(head.mean().item(), abs=1e-4)  # zeros counted


def test_fill_missing_counts_nan_and_infinite_readings():
    values = torch.ones(10, 2, 1)
    values[1, 0, 0], values[2, 1, 0], values[3, 0, 0] = float("nan"), float("inf"), -float("inf")
    assert fill_missing(values, 0.0) == 3 and int((values == 0).sum()) == 3 and bool(torch.isfinite(values).all())
    again = torch.ones(4, 1, 1)
    again[0, 0, 0], again[1, 0, 0] = float("nan"), float("inf")
    assert fill_missing(again, None) == 2 and int(torch.isnan(again).sum()) == 2  # NaN is the marker
