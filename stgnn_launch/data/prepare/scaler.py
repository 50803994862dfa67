"""The z-score: statistics of the observed training readings only (no leakage of later steps)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from stgnn_launch.data.prepare.missing import chunk_steps as default_chunk_steps
from stgnn_launch.data.prepare.missing import observed
from stgnn_launch.errors import UserError


@dataclass(frozen=True)
class Scaler:
    """Per-feature z-score; statistics from observed training readings only.

    The one definition of normalisation and its inverse: the batches' inputs (`transform_channels`), the
    training targets and the de-normalised predictions (`transform`, `inverse`), the baselines' fit."""

    mean: torch.Tensor  # F
    std: torch.Tensor  # F
    # the float32 statistics as Python floats (exact), for scalar arithmetic per channel: read from the host
    # tensors once, and carried along by `to` (no read back from a device)
    host_mean: tuple[float, ...] | None = field(default=None, repr=False, compare=False)
    host_std: tuple[float, ...] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.host_mean is None:
            object.__setattr__(self, "host_mean", tuple(self.mean.tolist()))
        if self.host_std is None:
            object.__setattr__(self, "host_std", tuple(self.std.tolist()))

    def head(self, features: int) -> "Scaler":
        """The statistics of the first `features` features (the predicted ones)."""
        return Scaler(self.mean[:features], self.std[:features], self.host_mean[:features], self.host_std[:features])

    def to(self, device: torch.device) -> "Scaler":
        """The statistics on `device`: kept there, so that each batch's arithmetic copies nothing."""
        return Scaler(self.mean.to(device), self.std.to(device), self.host_mean, self.host_std)

    def transform(self, values: torch.Tensor, features: int | None = None) -> torch.Tensor:
        """(values - mean) / std over the first `features` features (all by default)."""
        mean, std = (self.mean, self.std) if features is None else (self.mean[:features], self.std[:features])
        return (values - mean.to(values.device)) / std.to(values.device)

    def inverse(self, values: torch.Tensor, features: int | None = None) -> torch.Tensor:
        """De-normalize the first `features` features (all by default)."""
        f = values.shape[-1] if features is None else features
        return values * self.std[:f].to(values.device) + self.mean[:f].to(values.device)

    def transform_channels(self, values: torch.Tensor, out: torch.Tensor) -> None:
        """out[..., i] = the z-scored values[..., i], one pass per channel (a broadcast over a last axis of 1 or
        2 features runs unvectorised), with scalar statistics: bitwise the same batches on CPUs and GPUs.

        CUDA turns a division by a host scalar into a multiplication by its reciprocal (other rounding than
        the CPU's true division): on a GPU the divisor is `std` on the device (see `to`) instead."""
        for i in range(values.shape[-1]):
            channel = out[..., i]
            torch.sub(values[..., i], self.host_mean[i], out=channel)
            channel.div_(self.std[i] if channel.is_cuda else self.host_std[i])


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
