"""Masked MAE, RMSE and MAPE as DCRNN defines them, reducible across ranks.

DCRNN masks readings equal to the null value (or NaN), renormalizes the mask by its mean and averages:
mean(|e| * m / mean(m)) = sum(|e| * m) / sum(m). Keeping the sums and the mask count, rather than
per-rank means, makes the result independent of how the windows are split over ranks.
"""

from __future__ import annotations

import math

import torch

REPORTED_STEPS = (3, 6, 12)  # 15, 30 and 60 minutes at 5-minute steps


def observed_mask(y: torch.Tensor, null_value: float) -> torch.Tensor:
    mask = ~torch.isnan(y)
    if not math.isnan(null_value):
        mask &= y != null_value
    return mask


def masked_mae_loss(pred: torch.Tensor, y: torch.Tensor, null_value: float) -> torch.Tensor:
    """Training loss: masked MAE on de-normalized values; 0 for a batch with nothing observed."""
    mask = observed_mask(y, null_value)
    err = torch.where(mask, (pred - y).abs(), torch.zeros((), dtype=pred.dtype, device=pred.device))
    return err.sum() / mask.sum().clamp_min(1)


class MetricSums:
    """Per horizon step: sum |e|, sum e^2, sum |e / y| and the count of observed targets (float64)."""

    def __init__(self, horizon: int, device: torch.device) -> None:
        self.sums = torch.zeros(4, horizon, dtype=torch.float64, device=device)

    def update(self, pred: torch.Tensor, y: torch.Tensor, null_value: float) -> None:
        """pred, y: B x H x N x F de-normalized."""
        pred = pred.to(torch.float64)
        y = y.to(torch.float64)
        mask = observed_mask(y, null_value)
        zero = torch.zeros((), dtype=torch.float64, device=y.device)
        err = torch.where(mask, pred - y, zero)
        pct = torch.where(mask, err.abs() / torch.where(mask, y.abs(), 1.0), zero)
        dims = (0, 2, 3)
        stacked = torch.stack([err.abs().sum(dims), (err * err).sum(dims), pct.sum(dims), mask.sum(dims)])
        self.sums += stacked.to(self.sums.device)

    def result(self) -> dict[str, dict[str, float]]:
        """{"3": {...}, "6": ..., "12": ..., "avg": pooled over every step}; MAPE as a fraction."""
        sums = self.sums.cpu()
        out = {}
        for step in REPORTED_STEPS:
            if step <= sums.shape[1]:
                out[str(step)] = _finish(sums[:, step - 1])
        out["avg"] = _finish(sums.sum(dim=1))
        return out


def _finish(column: torch.Tensor) -> dict[str, float]:
    abs_sum, sq_sum, pct_sum, count = (float(v) for v in column)
    if count == 0:
        return {"mae": float("nan"), "rmse": float("nan"), "mape": float("nan"), "count": 0}
    return {"mae": abs_sum / count, "rmse": math.sqrt(sq_sum / count), "mape": pct_sum / count,
            "count": int(count)}
