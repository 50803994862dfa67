"""Extrapolate a validation-MAE learning curve to the end of full training.

Two saturating forms, each with an asymptote `a`, a scale `b >= 0` and a rate `c > 0`, fitted by
scipy.optimize.curve_fit (bounded trust-region least squares):
    inverse_power  y = a + b * x^-c        (power-law learning curves: slow, heavy-tailed saturation)
    exponential    y = a + b * exp(-c x)   (fast saturation)
x is training progress in full epochs (epochs x the share of training windows each profiling epoch saw).
`auto` fits both and keeps the one with the smaller squared error (same parameter count, so this is also
the smaller AIC). The fit's uncertainty is the delta-method standard deviation of its value at the end
from the parameter covariance; where that is undefined (no more points than parameters, or a fit that
failed), it is the gap between that value and the last observed one.

Shrinkage. Three parameters fitted to a handful of noisy epochs can extrapolate far below anything seen
(on the synthetic set Graph WaveNet's curve 2.83, 2.35, 2.65, 1.70 extrapolated to 0.27 +- 21.9; full
training reached 1.49). So the predicted *gain* over the best value seen, g = best - fit, is shrunk by its
own uncertainty s: predicted = best - w g with w = g^2 / (g^2 + s^2), the posterior mean of the gain under
a Normal(0, g^2) prior (empirical Bayes, no tuned constant). A confident fit keeps its gain (w ~ 1); one
whose uncertainty exceeds its gain stays near what was seen.

Its standard deviation. The posterior's own, sqrt(w) s, goes to 0 with w: a short curve that is flat or
erratic (no gain the fit can support) would claim a certain final value, though more training may still
lower it a lot (Graph WaveNet on the Montevideo bus: 0.570 0.546 0.534 0.548 over four half-epochs, 0.420
after ten epochs). So the share of the gain that shrinkage sets aside keeps an uncertainty of its own: the
curve's recent trend, the fall from the best of its first half to its best, continued linearly to the end
(t, 0.096 there), and std = max(sqrt(w) s, (1 - w) t). A confident fit keeps its own std; a rejected gain
reports what the trend leaves open. Predicted values, and so rankings, do not change.
On the study's nine runs (benchmarks/RESULTS.md, "The profiler's predictor") its Kendall tau against full
training is higher than the bare extrapolation's on six, equal on three, lower on none.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit


def inverse_power(x: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    return a + b * np.power(x, -c)


def exponential(x: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    return a + b * np.exp(-c * x)


def _inverse_power_gradient(x: float, a: float, b: float, c: float) -> np.ndarray:
    return np.array([1.0, x ** -c, -b * x ** -c * np.log(x)])


def _exponential_gradient(x: float, a: float, b: float, c: float) -> np.ndarray:
    return np.array([1.0, np.exp(-c * x), -b * x * np.exp(-c * x)])


FORMS: dict[str, tuple[Callable[..., np.ndarray], Callable[..., np.ndarray]]] = {
    "inverse_power": (inverse_power, _inverse_power_gradient),
    "exponential": (exponential, _exponential_gradient),
}


@dataclass(frozen=True)
class CurveFit:
    form: str  # inverse_power | exponential | last_value (no fit possible)
    params: tuple[float, ...]  # (a, b, c)
    predicted: float  # the MAE expected at the end of full training: best seen - shrunk gain (module docstring)
    std: float  # uncertainty of `predicted`
    sse: float  # squared error of the fit over the observed points
    extrapolated: float = float("nan")  # the fitted curve's own value at the end (capped at the best seen)
    extrapolated_std: float = float("nan")  # its delta-method standard deviation
    weight: float = 1.0  # w: the share of the extrapolated gain kept
    trend: float = 0.0  # t: the recent fall continued linearly to the end (the std of a rejected gain)

    def as_dict(self) -> dict:
        return {"form": self.form, "params": [float(p) for p in self.params], "predicted": float(self.predicted),
                "std": float(self.std), "sse": float(self.sse), "extrapolated": float(self.extrapolated),
                "extrapolated_std": float(self.extrapolated_std), "weight": float(self.weight),
                "trend": float(self.trend)}


def fit_form(form: str, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Parameters (a, b, c) and their covariance for one form; raises RuntimeError if the fit fails."""
    function, _ = FORMS[form]
    a0 = 0.9 * float(y.min())
    if form == "inverse_power":
        c0 = 0.5
        b0 = max(float(y[0]) - a0, 1e-6) * float(x[0]) ** c0
    else:
        c0 = 1.0 / max(float(np.ptp(x)), 1e-6)
        b0 = max(float(y[0]) - a0, 1e-6) * float(np.exp(c0 * x[0]))
    bounds = ([0.0, 0.0, 1e-4], [float(y.max()), np.inf, 20.0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OptimizeWarning)  # an undefined covariance is handled by the caller
        params, cov = curve_fit(function, x, y, p0=[a0, b0, c0], bounds=bounds, maxfev=20000)
    return params, cov


def predict_final(x: np.ndarray | list[float], y: np.ndarray | list[float], at: float, form: str = "auto") -> CurveFit:
    """Fit the learning curve (x: progress in full epochs, y: validation MAE) and predict y at `at`."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    best_seen = float(y.min())
    half = max(1, x.size // 2)
    span = float(x[-1] - x[half - 1]) if x.size > 1 else 0.0
    fall = float(y[:half].min()) - best_seen
    trend = fall * max(float(at) - float(x[-1]), 0.0) / span if span > 0 else 0.0
    fits = []
    for name in (FORMS if form == "auto" and x.size >= 3 else (form,) if x.size >= 3 else ()):
        try:
            params, cov = fit_form(name, x, y)
        except (RuntimeError, ValueError):  # no convergence
            continue
        function, gradient = FORMS[name]
        sse = float(np.sum((function(x, *params) - y) ** 2))
        fits.append((sse, name, params, cov, float(function(at, *params)), gradient(at, *params)))
    if not fits:
        std = float(abs(y[-1] - best_seen))
        return CurveFit("last_value", (best_seen, 0.0, 0.0), best_seen, max(std, trend), 0.0, best_seen,
                        std, 0.0, trend)
    sse, name, params, cov, value, grad = min(fits, key=lambda fit: fit[0])
    extrapolated = min(value, best_seen)  # full training keeps its best epoch: never worse than seen already
    variance = float(grad @ cov @ grad) if np.all(np.isfinite(cov)) else np.nan
    std = np.sqrt(variance) if np.isfinite(variance) and variance >= 0 else abs(float(y[-1]) - extrapolated)
    gain = best_seen - extrapolated
    weight = gain ** 2 / (gain ** 2 + std ** 2) if gain > 0 else 0.0
    honest = max(float(np.sqrt(weight) * std), (1 - weight) * trend)
    return CurveFit(name, tuple(float(p) for p in params), best_seen - weight * gain, honest, sse, extrapolated,
                    float(std), float(weight), trend)
