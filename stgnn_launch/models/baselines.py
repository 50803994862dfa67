"""Non-learned baselines: persistence (the naive last-value forecast) and the historical average
(HA, a baseline of DCRNN, Li et al., ICLR 2018).

Both have `trainable = False`: the trainer fits them once with `fit(train_values, train_observed,
train_slots)` and evaluates them on the same path as the networks (forward -> B x H x N x F_out,
z-scored).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from stgnn_launch.models.host_state import HostState
from stgnn_launch.models.registry import ModelSpec, register

ArrayLike = Tensor | np.ndarray


@register("persistence")
class Persistence(nn.Module):
    """Every future step equals the last observed input step (its first F_out channels)."""

    trainable = False

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.horizon, self.out_features = spec.horizon, spec.out_features

    def fit(self, train_values: ArrayLike, train_observed: ArrayLike, train_slots: ArrayLike) -> None:
        """Nothing to learn."""

    def forward(self, x: Tensor, targets: Tensor | None = None) -> Tensor:
        last = x[:, -1:, :, : self.out_features]
        return last.expand(-1, self.horizon, -1, -1).contiguous()


@register("historical_average")
class HistoricalAverage(HostState):
    """Per sensor and time-of-day slot mean of the observed training readings.

    A (slot, sensor) pair never observed falls back to the sensor's overall observed mean (0, the
    z-scored mean, if the sensor has no reading at all). The prediction for output step h (1-based)
    is the table at slot(last input step) + h, the slot read from the time-of-day fraction covariate.
    """

    trainable = False
    needs_slots = True  # a table per time-of-day slot: the step must divide a day
    _chunk = 8192  # training steps per accumulation pass: bounded memory on year-long series

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.horizon = spec.horizon
        self.steps_per_day = spec.steps_per_day
        self.tod_channel = spec.tod_channel
        table = torch.zeros(spec.steps_per_day, spec.num_nodes, spec.out_features)
        self.register_buffer("table", table)  # persistent: the fitted state is the whole model
        self.fitted = False  # a host flag: asking it per batch costs no device round trip

    host_state = (("fitted", bool),)

    @torch.no_grad()
    def fit(self, train_values: ArrayLike, train_observed: ArrayLike, train_slots: ArrayLike) -> None:
        """train_values, train_observed: T x N x F_out (z-scored; True = a real reading);
        train_slots: T time-of-day slots in [0, steps_per_day)."""
        values = torch.as_tensor(train_values)
        observed = torch.as_tensor(train_observed, dtype=torch.bool, device=values.device)
        slots = torch.as_tensor(train_slots, dtype=torch.long, device=values.device)
        if values.shape != observed.shape or values.shape[1:] != self.table.shape[1:] or slots.shape != values.shape[:1]:
            raise ValueError(
                f"historical_average.fit: expected T x {tuple(self.table.shape[1:])} values and mask and T slots, "
                f"found {tuple(values.shape)}, {tuple(observed.shape)}, {tuple(slots.shape)}"
            )
        if slots.numel() and (slots.min() < 0 or slots.max() >= self.steps_per_day):
            raise ValueError(f"historical_average.fit: slots must lie in [0, {self.steps_per_day})")
        sums = torch.zeros(self.table.shape, dtype=torch.float64, device=values.device)
        counts = torch.zeros_like(sums)
        for start in range(0, values.shape[0], self._chunk):
            part = slice(start, start + self._chunk)
            mask = observed[part]
            # where(), not multiply: a missing reading may be NaN.
            sums.index_add_(0, slots[part], torch.where(mask, values[part].double(), 0.0))
            counts.index_add_(0, slots[part], mask.double())
        overall = sums.sum(0) / counts.sum(0).clamp_min(1)  # N x F_out; 0 for a never-observed sensor
        table = torch.where(counts > 0, sums / counts.clamp_min(1), overall)
        self.table.copy_(table.to(self.table.dtype))
        self.fitted = True

    def forward(self, x: Tensor, targets: Tensor | None = None) -> Tensor:
        if not self.fitted:
            raise RuntimeError("historical_average: call fit(...) before predicting")
        days = self.steps_per_day
        frac = x[:, -1, :, self.tod_channel]  # B x N, fraction of the day of the last input step
        slot = torch.round(frac * days).long() % days
        ahead = torch.arange(1, self.horizon + 1, device=x.device).view(1, -1, 1)
        rows = (slot.unsqueeze(1) + ahead) % days  # B x H x N
        nodes = torch.arange(x.shape[2], device=x.device).view(1, 1, -1)
        return self.table[rows, nodes]  # B x H x N x F_out
