"""Masked MAE, RMSE and MAPE as DCRNN defines them, reducible across ranks.

DCRNN masks readings equal to the null value (or NaN), renormalizes the mask by its mean and averages:
mean(|e| * m / mean(m)) = sum(|e| * m) / sum(m). Keeping the sums and the mask count, rather than
per-rank means, makes the result independent of how the windows are split over ranks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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
    """Per horizon step: sum |e|, sum e^2, sum |e / y|, the count of observed targets and sum y^2 of
    the observed targets (float64; the last for T-GCN's accuracy)."""

    def __init__(self, horizon: int, device: torch.device) -> None:
        self.sums = torch.zeros(5, horizon, dtype=torch.float64, device=device)

    def update(self, pred: torch.Tensor, y: torch.Tensor, null_value: float) -> None:
        """pred, y: B x H x N x F de-normalized."""
        pred = pred.to(torch.float64)
        y = y.to(torch.float64)
        mask = observed_mask(y, null_value)
        zero = torch.zeros((), dtype=torch.float64, device=y.device)
        err = torch.where(mask, pred - y, zero)
        pct = torch.where(mask, err.abs() / torch.where(mask, y.abs(), 1.0), zero)
        dims = (0, 2, 3)
        y_obs = torch.where(mask, y, zero)
        stacked = torch.stack([err.abs().sum(dims), (err * err).sum(dims), pct.sum(dims), mask.sum(dims),
                               (y_obs * y_obs).sum(dims)])
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


    def pooled(self, upto_steps: Sequence[int]) -> dict[str, dict[str, float]]:
        """T-GCN's reporting: for each k, the metrics pooled over output steps 1..k (a k-step forecast's
        whole output), plus accuracy = 1 - ||Y - Ŷ||_F / ||Y||_F over the same observed targets.
        Keyed by k (steps, not minutes); a k beyond the horizon is left out."""
        sums = self.sums.cpu()
        out = {}
        for k in upto_steps:
            if 1 <= k <= sums.shape[1]:
                column = sums[:, :k].sum(dim=1)
                metrics = _finish(column)
                sq_err, sq_y = float(column[1]), float(column[4])
                metrics["acc"] = 1.0 - math.sqrt(sq_err / sq_y) if sq_y > 0 else float("nan")
                out[str(k)] = metrics
        return out


def _finish(column: torch.Tensor) -> dict[str, float]:
    abs_sum, sq_sum, pct_sum, count = (float(v) for v in column[:4])
    if count == 0:
        return {"mae": float("nan"), "rmse": float("nan"), "mape": float("nan"), "count": 0}
    return {"mae": abs_sum / count, "rmse": math.sqrt(sq_sum / count), "mape": pct_sum / count,
            "count": int(count)}
