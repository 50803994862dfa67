"""Metrics against an independent numpy implementation of DCRNN's masked metrics."""

import numpy as np
import pytest
import torch

from stgnn_launch.train.metrics import MetricSums, masked_mae_loss


def dcrnn_np(preds, labels, null_val):
    """DCRNN's masked_*_np: mask renormalized by its mean, NaNs zeroed, then averaged."""
    with np.errstate(divide="ignore", invalid="ignore"):
        mask = ~np.isnan(labels) if np.isnan(null_val) else np.not_equal(labels, null_val)
        mask = mask.astype("float32")
        mask /= np.mean(mask)
        mae = np.nan_to_num(np.abs(preds - labels) * mask).mean()
        mse = np.nan_to_num(np.square(preds - labels) * mask).mean()
        mape = np.nan_to_num(np.abs(np.divide(preds - labels, labels)) * mask).mean()
    return mae, np.sqrt(mse), mape


@pytest.mark.parametrize("null_value", [0.0, float("nan")])
def test_metrics_match_numpy_reference(null_value):
    rng = np.random.default_rng(1)
    labels = rng.uniform(20, 70, (50, 12, 9, 1)).astype(np.float64)
    preds = labels + rng.normal(0, 4, labels.shape)
    missing = rng.random(labels.shape) < 0.1
    labels[missing] = null_value
    sums = MetricSums(12, torch.device("cpu"))
    for chunk in np.array_split(np.arange(50), 7):  # several batches, as in evaluation
        sums.update(torch.from_numpy(preds[chunk]), torch.from_numpy(labels[chunk]), null_value)
    result = sums.result()
    for step in (3, 6, 12):
        mae, rmse, mape = dcrnn_np(preds[:, step - 1], labels[:, step - 1], null_value)
        assert result[str(step)]["mae"] == pytest.approx(mae, abs=1e-6)
        assert result[str(step)]["rmse"] == pytest.approx(rmse, abs=1e-6)
        assert result[str(step)]["mape"] == pytest.approx(mape, abs=1e-6)
    mae, rmse, mape = dcrnn_np(preds, labels, null_value)
    assert result["avg"]["mae"] == pytest.approx(mae, abs=1e-6)
    assert result["avg"]["rmse"] == pytest.approx(rmse, abs=1e-6)
    assert result["avg"]["mape"] == pytest.approx(mape, abs=1e-6)
    assert result["avg"]["count"] == int((~missing).sum())


def test_metric_sums_are_additive_across_shards():
    """Sums over two halves equal the sum over the whole: what an all-reduce over ranks relies on."""
    rng = np.random.default_rng(2)
    y = torch.from_numpy(rng.uniform(0, 60, (20, 12, 5, 1)))
    y[y < 5] = 0
    p = y + torch.from_numpy(rng.normal(0, 1, y.shape))
    whole, a, b = (MetricSums(12, torch.device("cpu")) for _ in range(3))
    whole.update(p, y, 0.0)
    a.update(p[:7], y[:7], 0.0)
    b.update(p[7:], y[7:], 0.0)
    assert torch.allclose(a.sums + b.sums, whole.sums, rtol=0, atol=1e-9)


def test_masked_mae_loss():
    y = torch.tensor([[0.0, 10.0], [20.0, 0.0]])
    p = torch.tensor([[5.0, 12.0], [17.0, 3.0]])
    assert masked_mae_loss(p, y, 0.0).item() == pytest.approx((2 + 3) / 2)
    assert masked_mae_loss(p, torch.zeros_like(y), 0.0).item() == 0.0  # nothing observed: no NaN


def test_mape_only_over_targets_above_the_threshold():
    y = torch.tensor([0.0, 0.5, 2.0, 10.0]).view(1, 1, 4, 1)  # bus counts: 0 is a reading, not missing
    pred = torch.tensor([1.0, 1.0, 1.0, 12.0]).view(1, 1, 4, 1)
    sums = MetricSums(1, torch.device("cpu"), mape_threshold=1.0)
    sums.update(pred, y, None)  # nothing is missing
    m = sums.result()["avg"]
    assert m["count"] == 4 and m["mae"] == pytest.approx((1 + 0.5 + 1 + 2) / 4)
    assert m["mape"] == pytest.approx((0.5 + 0.2) / 2)  # only y = 2 and y = 10 exceed the threshold
    nothing = MetricSums(1, torch.device("cpu"), mape_threshold=100.0)
    nothing.update(pred, y, None)
    assert np.isnan(nothing.result()["avg"]["mape"])  # no target above it: undefined, not 0
