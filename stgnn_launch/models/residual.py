"""A learned correction on top of a fitted baseline: forecast = base(x) + gate * network(x).

Why: on data nobody tuned for, a network trained for a few minutes can lose to the historical average (a
daily timetable read exactly), to persistence (slow traffic changes) or to the plain mean (noisy weekly
counts); which of them is hard to beat differs by dataset. `model.base=auto` fits, on the training range
only, the least-squares blend of the three per node and output step (`FittedBlend`), and the network learns
what the blend misses. The gate starts at 0, so the first forecast is the blend itself; Adam moves it and the
network from the first step. `historical_average` / `persistence` put the network on that baseline alone;
`none` trains the bare network, as the published protocols do (their presets set it).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from stgnn_launch.errors import UserError
from stgnn_launch.models.baselines import ArrayLike, HistoricalAverage, Persistence
from stgnn_launch.models.host_state import HostState
from stgnn_launch.models.registry import ModelSpec

RIDGE = 1e-3  # keeps the 3 x 3 normal equations of a sensor with few readings solvable
MAX_PAIRS = 4096  # (input, target) pairs per output step the blend is fitted on
IRLS_STEPS = 8  # reweighted least-squares passes towards the least absolute deviations (the MAE) fit
IRLS_FLOOR = 0.05  # residuals below this (z-scored) weigh as much as this one: no division by ~0


def least_absolute(features: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Per (node, feature), the coefficients minimising the mean absolute error of features @ coef against
    target over the masked pairs (iteratively reweighted least squares from the least-squares start): the
    networks train on the masked MAE, and with many exact zeros (bus boardings) the squared-error fit
    leans towards the mean. features: t x N x F x k, target and mask: t x N x F -> N x F x k."""
    weight = mask.double()
    eye = RIDGE * torch.eye(features.shape[-1], dtype=features.dtype)
    for _ in range(IRLS_STEPS + 1):
        weighted = features * weight.unsqueeze(-1)
        gram = torch.einsum("tnfi,tnfj->nfij", weighted, features) + eye
        coef = torch.linalg.solve(gram, torch.einsum("tnfi,tnf->nfi", weighted, target))
        residual = (target - torch.einsum("tnfi,nfi->tnf", features, coef)).abs()
        weight = mask.double() / residual.clamp_min(IRLS_FLOOR)
    return coef


class FittedBlend(HostState):
    """a * persistence + b * historical average + c, per output step, node and feature, fitted for the least
    absolute error on the training range's (last input, target) pairs; without time-of-day slots, b = 0."""

    trainable = False

    def __init__(self, spec: ModelSpec, with_average: bool):
        super().__init__()
        self.horizon, self.out_features = spec.horizon, spec.out_features
        self.average = HistoricalAverage(spec) if with_average else None
        self.register_buffer("coef", torch.zeros(3, spec.horizon, spec.num_nodes, spec.out_features))
        self.fitted = False

    host_state = (("fitted", bool),)

    @torch.no_grad()
    def fit(self, train_values: ArrayLike, train_observed: ArrayLike, train_slots: ArrayLike | None) -> None:
        values = torch.as_tensor(train_values)
        observed = torch.as_tensor(train_observed, dtype=torch.bool)
        if self.average is not None:
            self.average.fit(train_values, train_observed, train_slots)
        slots = None if self.average is None else torch.as_tensor(train_slots, dtype=torch.long)
        table = None if self.average is None else self.average.table.double()
        for h in range(1, self.horizon + 1):
            # 3 coefficients per node need few pairs: at most MAX_PAIRS steps, evenly spread over the range
            t = torch.linspace(0, values.shape[0] - h - 1, min(MAX_PAIRS, max(0, values.shape[0] - h))).round().long()
            features = self._features(values[t].double(), table, None if slots is None else slots[t], h)
            target, mask = values[t + h].double(), observed[t + h]
            target = torch.where(mask, target, 0.0)
            self.coef[:, h - 1] = least_absolute(features, target, mask).permute(2, 0, 1).to(self.coef.dtype)
        self.fitted = True

    def _features(self, last: Tensor, table: Tensor | None, slots: Tensor | None, h: int) -> Tensor:
        """[last reading, historical average h steps on (0 without slots), 1] for each step of `last`:
        t x N x F x 3. `table`: the fitted average's, in float64."""
        if slots is None:
            average = torch.zeros_like(last)
        else:
            average = table[(slots + h) % self.average.steps_per_day]  # t x N x F
        return torch.stack([last, average, torch.ones_like(last)], dim=-1)

    def forward(self, x: Tensor, targets: Tensor | None = None) -> Tensor:
        if not self.fitted:
            raise RuntimeError("fitted blend: call fit(...) before predicting")
        last = x[:, -1:, :, : self.out_features]  # B x 1 x N x F
        a, b, c = self.coef  # each H x N x F
        forecast = a * last + c
        if self.average is not None:
            forecast = forecast + b * self.average(x)
        return forecast


class BaselineResidual(nn.Module):
    """`network`'s output, scaled by a gate that starts at 0, added to `base`'s (both z-scored)."""

    trainable = True

    def __init__(self, network: nn.Module, base: nn.Module, base_name: str):
        super().__init__()
        self.network = network
        self.base = base
        self.base_name = base_name
        self.gate = nn.Parameter(torch.zeros(()))

    @property
    def fits_on_train(self) -> bool:
        """Whether the trainer calls fit(...) on the training range before the first step."""
        return not isinstance(self.base, Persistence)

    def fit(self, train_values, train_observed, train_slots) -> None:
        self.base.fit(train_values, train_observed, train_slots)

    def forward(self, x: Tensor, targets: Tensor | None = None) -> Tensor:
        return self.base(x) + self.gate * self.network(x, targets)


def with_base(model: nn.Module, choice: str, spec: ModelSpec, has_slots: bool, fits: bool) -> nn.Module:
    """`model` on top of the baseline `choice` names; a baseline model, or `none`, as it is. `has_slots`: the
    step divides a day; `fits`: the whole training range is on this rank and small enough for a fitting pass
    beside the model (train/run.py's rule for the side baselines). Where nothing can be fitted, auto trains
    the bare network: a year of PeMS would need GBs per rank for the pass."""
    if choice == "none" or not getattr(model, "trainable", True) or (choice == "auto" and not fits):
        return model
    if choice == "historical_average" and not (has_slots and fits):
        raise UserError("model.base: expected a base that can be fitted here, found historical_average on a series "
                        "without time-of-day slots, time-sharded or too large to fit beside the model; use "
                        "persistence, auto or none")
    if choice == "auto":
        label = "a fitted blend of persistence, " + ("the historical average " if has_slots else "") + "and the mean"
        return BaselineResidual(model, FittedBlend(spec, with_average=has_slots), label)
    base = HistoricalAverage(spec) if choice == "historical_average" else Persistence(spec)
    return BaselineResidual(model, base, choice.replace("_", " "))


def moving_buffers(model: nn.Module) -> list[str]:
    """The buffers training changes (BatchNorm's running statistics): DDP must broadcast those from rank 0
    before each forward. A fitted baseline's tables (modules with `trainable = False`) are constant after
    fit(...) and the same on every rank (fitted on the whole training range each rank holds)."""
    fixed = [name for name, module in model.named_modules() if not getattr(module, "trainable", True)]
    return [name for name, _ in model.named_buffers()
            if not any(f == "" or name.startswith(f + ".") for f in fixed)]


def fitted_average(model: nn.Module) -> HistoricalAverage | None:
    """The historical average a model on a fitted base already holds (fitted on the same training range as the
    side baseline would be), or None."""
    base = getattr(model, "base", None)
    return base if isinstance(base, HistoricalAverage) else getattr(base, "average", None)
