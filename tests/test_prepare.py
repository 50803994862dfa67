import numpy as np
import pytest
import torch

from helpers import random_series
from stgnn_launch.data.prepare import fit_scaler, prepare, split_starts, steps_per_day, time_covariates
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
    with pytest.raises(UserError, match="at least window \\+ horizon = 24 steps, found 20"):
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
    prepared = prepare(series, window=12, horizon=12, stride=1, train_ratio=0.7, test_ratio=0.2,
                       null_value=0.0, day_of_week=True)
    stop = int(prepared.starts["train"][-1]) + 12
    head = prepared.values[:stop].numpy()
    assert prepared.scaler.mean.item() == pytest.approx(head[head != 0].mean(), abs=1e-3)
    assert prepared.in_features == 3 and prepared.tod_channel == 1 and prepared.steps_per_day == 288


def test_time_covariates():
    ts = np.array(["2012-03-01T00:00", "2012-03-01T06:00", "2012-03-04T23:55"], dtype="datetime64[ns]")
    cov = time_covariates(ts, day_of_week=True).numpy()
    assert cov[:, 0] == pytest.approx([0.0, 0.25, 1435 / 1440])
    assert cov[:, 1] == pytest.approx([3 / 7, 3 / 7, 6 / 7])  # 2012-03-01 was a Thursday, 03-04 a Sunday
    assert steps_per_day(np.timedelta64(5, "m")) == 288
    with pytest.raises(UserError, match="divides a day"):
        steps_per_day(np.timedelta64(7, "m"))
