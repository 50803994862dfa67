"""DCRNN's Gaussian-kernel graph from road distances (rows from,to,distance)."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from stgnn_launch.config.paths import existing_file
from stgnn_launch.data.graph.files import check_unique_ids, is_number
from stgnn_launch.errors import UserError, expect


def gaussian_kernel_adjacency(
    distances_path: str | os.PathLike, sensor_ids: Sequence[str], threshold: float = 0.1
) -> np.ndarray:
    """DCRNN's graph from road distances: rows `from,to,distance` (header optional) -> N x N float32 weights.

    Only rows whose two ids are in `sensor_ids` count; the result's order is that of `sensor_ids`.
    """
    path = existing_file(distances_path)
    expect(0 <= threshold < 1, "graph threshold", "a weight in [0, 1)", threshold)
    ids = [str(s) for s in sensor_ids]
    check_unique_ids(path, ids)
    rows = _read_distance_rows(path)
    index = {sensor: i for i, sensor in enumerate(ids)}
    # Map each distinct id once, then every row through the inverse index: no per-row Python work.
    names, inverse = np.unique(rows[:, :2], return_inverse=True)
    positions = np.array([index.get(name, -1) for name in names], dtype=np.int64)[inverse.reshape(-1, 2)]
    keep = (positions >= 0).all(axis=1)
    try:
        values = rows[keep, 2].astype(np.float32)
    except ValueError as err:
        raise UserError(f"distances {path}: expected numbers in the third column, found {err}") from err
    distances = np.full((len(ids), len(ids)), np.inf, dtype=np.float32)
    distances[positions[keep, 0], positions[keep, 1]] = values
    return gaussian_kernel(distances, threshold, what=f"distances {path}")


def gaussian_kernel(distances: np.ndarray, threshold: float = 0.1, what: str = "distances") -> np.ndarray:
    """w = exp(-(d / sigma)^2) with sigma the std of the finite distances (inf = no road); w < threshold -> 0."""
    finite = distances[np.isfinite(distances)]
    if finite.size == 0 or finite.std() == 0:
        raise UserError(f"{what}: expected distances between the listed sensors, found {finite.size} usable ones")
    weights = np.exp(-np.square(distances / finite.std()))
    weights[weights < threshold] = 0
    return weights.astype(np.float32)


def _read_distance_rows(path: Path) -> np.ndarray:
    with open(path, newline="") as file:
        first = next(csv.reader(file), [])
    skip = 1 if len(first) >= 3 and not is_number(first[2].strip()) else 0
    try:
        rows = np.loadtxt(path, delimiter=",", dtype=str, skiprows=skip, ndmin=2, usecols=(0, 1, 2))
    except ValueError as err:
        raise UserError(f"distances {path}: expected rows from,to,distance, found {err}") from err
    return np.char.strip(rows)
