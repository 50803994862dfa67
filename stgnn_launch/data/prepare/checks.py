"""Sensor checks after loading: readings that are legal but suspicious get a warning, not a refusal.

* Negative readings, where `dataset.null_value` is set: the null-value convention (DCRNN's 0 for a
  missing speed) is for quantities that cannot be negative, so a negative reading is a broken file or
  a sign convention the user should know about. With `null_value: null` (centred or z-scored data, such
  as chickenpox) negative readings are normal and not counted.
* Constant sensors: every observed reading in the training range is the same value (a stuck sensor);
  the model can learn nothing from it, and its errors dominate nothing, so the run goes on.
* Readings beyond a sane range: a magnitude over OUTLIER_FACTOR times the dataset's typical one (one
  1e38 in a file of speeds); such a reading dominates the scaler and z-scores everything else to 0.
* Never-observed sensors: no observed reading in the training range. They are masked, not refused:
  their missing readings count in no loss and no metric (as every missing reading), the model sees the
  null value as their input, and the warning names them so that they can be dropped from the file.

The checks stream over the series in chunks of steps, so they need no full-size temporary.
"""

from __future__ import annotations

import math

import torch

from stgnn_launch.data.prepare.missing import chunk_steps, observed

_SHOWN = 5  # sensor names listed in a warning; the rest are counted


def sensor_warnings(values: torch.Tensor, sensor_ids: list[str], feature_names: list[str],
                    train_ranges: list[tuple[int, int]], null_value: float | None) -> list[str]:
    """One line per finding (none for a clean series): negative readings over the whole series,
    constant and never-observed sensors over the training steps `train_ranges`."""
    warnings = []
    negative, lowest = _negatives(values, null_value)
    if negative:
        warnings.append(f"{negative} readings are negative (lowest {lowest:g}) although dataset.null_value="
                        f"{null_value:g} marks missing readings of a non-negative quantity: check the file, or set "
                        "dataset.null_value=null for centred data")
    huge, largest, typical = _beyond_range(values, null_value)
    if huge:
        warnings.append(f"{huge} readings are beyond a sane range for this dataset (largest {largest:g}, over "
                        f"{OUTLIER_FACTOR:g} x the typical magnitude {typical:g}): a broken file? They dominate the "
                        "scaler's mean and std, so every other reading is z-scored to about 0; fix or blank them")
    seen, low, high = _training_extent(values, train_ranges, null_value)
    never = _names(seen == 0, sensor_ids, feature_names)
    constant = _names((seen >= 2) & (low == high), sensor_ids, feature_names)
    if constant:
        warnings.append(f"{len(constant)} sensors report one constant value over the training range "
                        f"({_listing(constant)}): a stuck sensor; nothing can be learnt from it")
    if never:
        warnings.append(f"{len(never)} sensors are never observed in the training range ({_listing(never)}): "
                        "they are masked (no loss, no metric; the model sees the null value as their input)")
    return warnings


OUTLIER_FACTOR = 1e4  # a reading this many times the dataset's typical magnitude is not a measurement
_SAMPLE = 2**20  # readings sampled for the typical magnitude


def _beyond_range(values: torch.Tensor, null_value: float | None) -> tuple[int, float, float]:
    """Observed readings whose magnitude exceeds OUTLIER_FACTOR x the median magnitude of the dataset's
    observed readings (from an even sample): (count, largest, median)."""
    stride = max(1, values.shape[0] * values.shape[1] * values.shape[2] // _SAMPLE)
    sample = values.reshape(-1)[::stride].float().cpu()
    sample = sample[observed(sample, null_value)].abs()
    if sample.numel() == 0:
        return 0, 0.0, 0.0
    typical = float(sample.median())
    if typical == 0:  # mostly zeros (counts): the scale of the non-zero readings instead
        nonzero = sample[sample > 0]
        typical = float(nonzero.median()) if nonzero.numel() else 0.0
    if typical == 0:
        return 0, 0.0, 0.0
    limit, count, largest, steps = OUTLIER_FACTOR * typical, 0, 0.0, chunk_steps(values)
    for first in range(0, values.shape[0], steps):
        block = values[first:first + steps].float().cpu()
        beyond = observed(block, null_value) & (block.abs() > limit)
        found = int(beyond.sum())
        if found:
            count += found
            largest = max(largest, float(block[beyond].abs().max()))
    return count, largest, typical


def _negatives(values: torch.Tensor, null_value: float | None) -> tuple[int, float]:
    if null_value is None or math.isnan(null_value):
        return 0, 0.0
    count, lowest, steps = 0, 0.0, chunk_steps(values)
    for first in range(0, values.shape[0], steps):
        block = values[first:first + steps].float().cpu()
        negative = observed(block, null_value) & (block < 0)
        found = int(negative.sum())
        if found:
            count += found
            lowest = min(lowest, float(block[negative].min()))
    return count, lowest


def _training_extent(values: torch.Tensor, ranges: list[tuple[int, int]],
                     null_value: float | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per sensor and feature (N x F): observed readings, their minimum and maximum, in `ranges`."""
    shape = tuple(values.shape[1:])
    seen = torch.zeros(shape, dtype=torch.int64)
    low = torch.full(shape, math.inf)
    high = torch.full(shape, -math.inf)
    steps = chunk_steps(values)
    for start, stop in ranges:
        for first in range(start, stop, steps):
            block = values[first:min(stop, first + steps)].float().cpu()
            mask = observed(block, null_value)
            seen += mask.sum(dim=0)
            low = torch.minimum(low, torch.where(mask, block, math.inf).amin(dim=0))
            high = torch.maximum(high, torch.where(mask, block, -math.inf).amax(dim=0))
    return seen, low, high


def _names(flags: torch.Tensor, sensor_ids: list[str], feature_names: list[str]) -> list[str]:
    """Sensor ids where `flags` (N x F) holds; 'id/feature' when the series has several features."""
    several = len(feature_names) > 1
    return [f"{sensor_ids[n]}/{feature_names[f]}" if several else sensor_ids[n]
            for n, f in flags.nonzero().tolist()]


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown if len(names) <= _SHOWN else f"{shown} and {len(names) - _SHOWN} more"


def graph_warnings(graph, sensor_ids: list[str]) -> list[str]:
    """Sensors with no edge to or from another sensor: their rows of a random walk D^-1 A are zero (DCRNN's
    convention) and T-GCN's A + I leaves them their own signal only, so the graph tells the model nothing
    about them."""
    if graph is None or graph.num_nodes == 0:
        return []
    linked = torch.zeros(graph.num_nodes, dtype=torch.bool)
    others = (graph.rows != graph.cols) & (graph.weights != 0)
    linked[torch.from_numpy(graph.rows[others])] = True
    linked[torch.from_numpy(graph.cols[others])] = True
    alone = [sensor_ids[i] for i in (~linked).nonzero().flatten().tolist()]
    if not alone:
        return []
    return [f"{len(alone)} sensors have no edge to or from another sensor in the graph ({_listing(alone)}): the "
            "graph convolutions see only their own readings"]
