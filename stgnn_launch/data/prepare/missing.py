"""Missing readings, decided in one place: what counts as missing, and one marker for it in the series.

A reading is missing when it is NaN, infinite, or equal to `dataset.null_value` (DCRNN's 0 for speeds);
`null_value: null` says that every finite reading is real (counts where 0 is a reading, z-scored data).
Non-finite readings are rewritten once per node to the null value (or to NaN when there is none), so
that downstream only `observed()` needs to know the rule.
"""

from __future__ import annotations

import math

import torch

CHUNK_READINGS = 2**20  # readings per pass over the series: temporaries of a few MB, whatever N (PeMS: 11,160)


def chunk_steps(values: torch.Tensor, readings: int = CHUNK_READINGS) -> int:
    """Steps per chunk for streaming passes over a T x N x F series (filling, scaler, checks): a block of
    fixed steps would be N times larger on PeMS than on METR-LA (4,096 steps were 0.4-0.9 GB there)."""
    return max(1, readings // max(1, values[0].numel()))


def observed(values: torch.Tensor, null_value: float | None) -> torch.Tensor:
    """True where a reading is real (finite, and not the null value)."""
    mask = torch.isfinite(values)
    if null_value is not None and not math.isnan(null_value):
        mask &= values != null_value
    return mask


def fill_missing(values: torch.Tensor, null_value: float | None) -> int:
    """Rewrite NaN and +-inf readings, in place, to the null value (NaN when there is none).

    Returns how many readings it rewrote. Looks before it writes, chunk by chunk, so that a series shared
    by a node's ranks is written by its creator only, and a clean series is never touched."""
    marker = float("nan") if null_value is None else float(null_value)
    count = 0
    steps = chunk_steps(values)
    for first in range(0, values.shape[0], steps):
        block = values[first:first + steps]
        bad = ~torch.isfinite(block)
        if math.isnan(marker):
            bad &= ~torch.isnan(block)  # NaN already is the marker
            count += int(torch.isnan(block).sum())
        found = int(bad.sum())
        if found:
            block.masked_fill_(bad, marker)
            count += found
    return count


def count_missing(values: torch.Tensor, null_value: float | None) -> int:
    """How many readings `observed` calls missing, chunk by chunk (no full-size temporary)."""
    count, steps = 0, chunk_steps(values)
    for first in range(0, values.shape[0], steps):
        block = values[first:first + steps]
        count += block.numel() - int(observed(block, null_value).sum())
    return count
