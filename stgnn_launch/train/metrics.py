"""Masked MAE, RMSE and MAPE as DCRNN defines them, reducible across ranks.

DCRNN masks readings equal to the null value (or NaN), renormalizes the mask by its mean and averages:
mean(|e| * m / mean(m)) = sum(|e| * m) / sum(m). Keeping the sums and the mask count, rather than
per-rank means, makes the result independent of how the windows are split over ranks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from stgnn_launch.data.prepare.missing import observed

REPORTED_STEPS = (3, 6, 12)  # 15, 30 and 60 minutes at 5-minute steps
AUTO_MAPE_FRACTION = 0.01  # metrics.mape_threshold=null: 1% of the training readings' RMS magnitude
MAPE_ALARM = 10.0  # a MAPE above 1,000% is printed with the targets that make it up
_DECADES = (-24, 8)  # |y| per decade 1e-24 .. 1e8 (the ends take everything beyond): where MAPE comes from
_NB = _DECADES[1] - _DECADES[0]


def observed_mask(y: torch.Tensor, null_value: float | None) -> torch.Tensor:
    """True where a target is a real reading (the one rule lives in data/prepare/missing.py)."""
    return observed(y, null_value)


def masked_mae_loss(pred: torch.Tensor, y: torch.Tensor, null_value: float | None) -> torch.Tensor:
    """Training loss: masked MAE on de-normalized values; 0 for a batch with nothing observed."""
    mask = observed_mask(y, null_value)
    err = torch.where(mask, (pred - y).abs(), torch.zeros((), dtype=pred.dtype, device=pred.device))
    return err.sum() / mask.sum().clamp_min(1)


class MetricSums:
    """Per horizon step: sum |e|, sum e^2, sum |e / y|, the count of observed targets, sum y^2 of the
    observed targets (T-GCN's accuracy) and the count of targets MAPE covers (float64); then, per decade
    of |y|, the count of MAPE's targets and their sum |e / y| (which readings a huge MAPE comes from).

    MAPE covers the observed targets with |y| > mape_threshold: DCRNN's MAPE masks only missing values,
    which is the threshold 0 for speeds; near-zero counts (bus inflow) would make it meaningless."""

    def __init__(self, horizon: int, device: torch.device, mape_threshold: float = 0.0) -> None:
        self.sums = torch.zeros(6 + 2 * _NB, horizon, dtype=torch.float64, device=device)
        self.mape_threshold = mape_threshold

    def update(self, pred: torch.Tensor, y: torch.Tensor, null_value: float | None) -> None:
        """pred, y: B x H x N x F de-normalized."""
        pred = pred.to(torch.float64)
        y = y.to(torch.float64)
        mask = observed_mask(y, null_value)
        zero = torch.zeros((), dtype=torch.float64, device=y.device)
        err = torch.where(mask, pred - y, zero)
        in_mape = mask & (y.abs() > self.mape_threshold)
        pct = torch.where(in_mape, err.abs() / torch.where(in_mape, y.abs(), 1.0), zero)
        dims = (0, 2, 3)
        y_obs = torch.where(mask, y, zero)
        stacked = torch.stack([err.abs().sum(dims), (err * err).sum(dims), pct.sum(dims), mask.sum(dims),
                               (y_obs * y_obs).sum(dims), in_mape.sum(dims)])
        self.sums[:6] += stacked.to(self.sums.device)
        horizon = y.shape[1]
        decade = torch.floor(torch.log10(torch.where(in_mape, y.abs(), 1.0))).clamp(*_DECADES) - _DECADES[0]
        slot = (decade.clamp_max(_NB - 1).long() * horizon
                + torch.arange(horizon, device=y.device).view(1, -1, 1, 1))[in_mape]
        counts = torch.bincount(slot, minlength=_NB * horizon).to(torch.float64)
        pcts = torch.bincount(slot, weights=pct[in_mape], minlength=_NB * horizon)
        self.sums[6:] += torch.cat([counts, pcts]).view(2 * _NB, horizon).to(self.sums.device)

    def mape_alarm(self) -> str | None:
        """Over every step: None while MAPE is at most 1,000%; else which targets make it up (the fewest
        decades of the smallest |y| that hold half of its sum), so that a huge MAPE never goes unexplained."""
        total = self.sums.cpu().sum(dim=1)
        count, pcts = total[6:6 + _NB], total[6 + _NB:]
        if not float(total[5]) or float(total[2]) / float(total[5]) <= MAPE_ALARM:
            return None
        share = torch.cumsum(pcts, 0) / pcts.sum()
        last = int((share >= 0.5).nonzero()[0])
        below = 10.0 ** (last + 1 + _DECADES[0])
        return (f"MAPE above 1,000%: {100 * float(share[last]):.1f}% of its sum comes from "
                f"{int(count[:last + 1].sum()):,} of {int(count.sum()):,} targets with |y| < {below:g} "
                "(readings near zero); raise metrics.mape_threshold, e.g. stgnn-eval RUN_DIR metrics.mape_threshold=...")

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


def auto_mape_threshold(mean: torch.Tensor, std: torch.Tensor) -> float:
    """metrics.mape_threshold=null: AUTO_MAPE_FRACTION of the RMS magnitude of the observed training readings
    of the predicted features (from the scaler's mean and std), so that readings near zero (float residue,
    idle counts) do not blow MAPE up, whatever the unit of the data."""
    rms = float((mean.double() ** 2 + std.double() ** 2).mean().sqrt())
    return float(f"{AUTO_MAPE_FRACTION * rms:.3g}")


def mape_threshold_facts(configured: float | None, scaler, out_features: int) -> dict[str, float | str]:
    """metrics.mape_threshold as set, or (null) from the scaler's training statistics: the same on every rank
    and in stgnn-eval, which prepares the same data."""
    if configured is not None:
        return {"mape_threshold": configured, "mape_threshold_rule": "metrics.mape_threshold"}
    f = out_features
    return {"mape_threshold": auto_mape_threshold(scaler.mean[:f], scaler.std[:f]),
            "mape_threshold_rule": f"auto: {AUTO_MAPE_FRACTION:.0%} of the training readings' RMS magnitude"}


def mape_alarms(sums: dict[str, MetricSums]) -> list[str]:
    """One line per row of the test table whose MAPE is above 1,000%, naming the readings that make it up."""
    return [f"note: {name}: {alarm}" for name, s in sums.items() if (alarm := s.mape_alarm())]


def _finish(column: torch.Tensor) -> dict[str, float]:
    abs_sum, sq_sum, pct_sum, count = (float(v) for v in column[:4])
    mape_count = float(column[5])
    mape = pct_sum / mape_count if mape_count else float("nan")
    if count == 0:
        return {"mae": float("nan"), "rmse": float("nan"), "mape": float("nan"), "count": 0}
    return {"mae": abs_sum / count, "rmse": math.sqrt(sq_sum / count), "mape": mape, "count": int(count)}
