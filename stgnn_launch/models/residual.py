"""A learned correction on top of a fitted baseline: forecast = baseline(x) + network(x).

Why: on data nobody tuned for, a network trained for a few epochs can lose to the historical average (a
daily timetable read exactly) or to persistence; started on top of the better of them, it only has to learn
what they miss, and early stopping on validation keeps what it learned only where it helps. `model.base`
picks the baseline: `auto` (the historical average where the step has time-of-day slots, persistence
otherwise), `historical_average`, `persistence` or `none` (the bare network, as the published protocols
train it; their presets set it).
"""

from __future__ import annotations

from torch import Tensor, nn

from stgnn_launch.errors import UserError
from stgnn_launch.models.baselines import HistoricalAverage, Persistence
from stgnn_launch.models.registry import ModelSpec

BASES = ("auto", "historical_average", "persistence", "none")


def with_base(model: nn.Module, choice: str, spec: ModelSpec, average_fits: bool) -> nn.Module:
    """`model` on top of the baseline `choice` names; a baseline model, or `none`, as it is.
    `average_fits`: the step has time-of-day slots and the training range is small enough to fit the
    historical average beside the model (train/run.py's rule for the side baselines)."""
    if choice == "none" or not getattr(model, "trainable", True):
        return model
    if choice == "auto":
        choice = "historical_average" if average_fits else "persistence"
    elif choice == "historical_average" and not average_fits:
        raise UserError("model.base: expected a base that can be fitted here, found historical_average on a series "
                        "without time-of-day slots, time-sharded or too large to fit beside the model; use "
                        "persistence, auto or none")
    return BaselineResidual(model, choice, spec)


class BaselineResidual(nn.Module):
    """`network`'s output is added to `base`'s (both z-scored, B x H x N x F_out)."""

    trainable = True
    fits_on_train = True  # the trainer calls fit(...) on the training range before the first step

    def __init__(self, network: nn.Module, base: str, spec: ModelSpec):
        super().__init__()
        self.network = network
        self.base = HistoricalAverage(spec) if base == "historical_average" else Persistence(spec)
        self.base_name = base

    def fit(self, train_values, train_observed, train_slots) -> None:
        self.base.fit(train_values, train_observed, train_slots)

    def forward(self, x: Tensor, targets: Tensor | None = None) -> Tensor:
        return self.base(x) + self.network(x, targets)
