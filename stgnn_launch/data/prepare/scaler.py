"""The z-score: statistics of the observed training readings only (no leakage of later steps)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stgnn_launch.data.prepare.missing import chunk_steps as default_chunk_steps
from stgnn_launch.data.prepare.missing import observed
from stgnn_launch.errors import UserError


@dataclass(frozen=True)
class Scaler:
    """Per-feature z-score; statistics from observed training readings only."""

    mean: torch.Tensor  # F
    std: torch.Tensor  # F

    def transform(self, values: torch.Tensor) -> torch.Tensor:
        return (values - self.mean.to(values.device)) / self.std.to(values.device)

    def inverse(self, values: torch.Tensor, features: int | None = None) -> torch.Tensor:
        """De-normalize the first `features` features (all by default)."""
        f = values.shape[-1] if features is None else features
        return values * self.std[:f].to(values.device) + self.mean[:f].to(values.device)


def scaler_sums(values: torch.Tensor, ranges: list[tuple[int, int]], null_value: float | None,
                chunk_steps: int | None = None) -> torch.Tensor:
    """3 x F float64: sum, sum of squares and count of the observed readings in the step `ranges`.

    Chunk by chunk (`missing.chunk_steps` unless told), so that a year of PeMS needs no full-size
    temporary; sums (not means) so that ranks holding different time ranges can add theirs up."""
    if chunk_steps is None:
        chunk_steps = default_chunk_steps(values)
    sums = torch.zeros(3, values.shape[-1], dtype=torch.float64)
    for start, stop in ranges:
        for first in range(start, stop, chunk_steps):
            block = values[first:min(stop, first + chunk_steps)].to(torch.float64).cpu()
            seen = observed(block, null_value)
            block = torch.where(seen, block, 0.0)
            sums += torch.stack([block.sum(dim=(0, 1)), (block * block).sum(dim=(0, 1)), seen.sum(dim=(0, 1))])
    return sums


def scaler_from_sums(sums: torch.Tensor) -> Scaler:
    total, total_sq, count = sums.cpu()
    if bool((count < 2).any()):
        raise UserError(f"scaler: expected observed (non-missing) readings in the training range of every "
                        f"feature, found counts {count.tolist()}")
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(0.0).sqrt()
    std = torch.where(std > 0, std, torch.ones_like(std))  # a constant feature must not divide by zero
    return Scaler(mean.to(torch.float32), std.to(torch.float32))


def fit_scaler(values: torch.Tensor, stop: int, null_value: float | None, chunk_steps: int | None = None) -> Scaler:
    """Mean and std per feature over steps [0, stop), skipping NaN and null readings."""
    return scaler_from_sums(scaler_sums(values, [(0, stop)], null_value, chunk_steps))
