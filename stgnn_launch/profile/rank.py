"""Orders of models by validation MAE and Kendall's tau between two orders (scipy.stats.kendalltau)."""

from __future__ import annotations

import math

from scipy.stats import kendalltau


def order(mae: dict[str, float]) -> list[str]:
    """Labels from best (lowest MAE) to worst; ties keep the given order."""
    return sorted(mae, key=lambda label: mae[label])


def kendall_tau(first: dict[str, float], second: dict[str, float]) -> float | None:
    """Tau-b between two scorings of the models both hold; None with fewer than 2 shared models or
    when one scoring is constant (tau undefined)."""
    shared = [label for label in first if label in second]
    if len(shared) < 2:
        return None
    tau = kendalltau([first[s] for s in shared], [second[s] for s in shared]).statistic
    return None if tau is None or math.isnan(tau) else float(tau)
