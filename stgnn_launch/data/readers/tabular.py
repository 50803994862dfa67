"""CSV and NumPy (.npy / .npz) series, read in time blocks so a conversion never holds the whole file.

CSV: a header row of sensor ids (T-GCN's los_speed.csv) and one row per step. Without a time column the
timestamps come from `start` and `freq`; a first column headed '', 'timestamp', 'time', 'date' or
'datetime' holds ISO timestamps instead, which must be evenly spaced. Empty cells, 'NA' and 'null' read
as NaN (missing).
NumPy: one array whose axes `axis_order` names (T = time, N = sensors, F = features), e.g. PyTorch
Geometric Temporal's node_values.npy (TNF); sensor ids are "0".."N-1".
"""

from __future__ import annotations

import csv
import os
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import torch

from stgnn_launch.config.paths import existing_file
from stgnn_launch.config.schema import AxisOrder
from stgnn_launch.data.series import Series, regular_timestamps
from stgnn_launch.errors import UserError

AXIS_ORDERS = tuple(AxisOrder)
DEFAULT_START = "2012-03-01T00:00"
DEFAULT_FREQ = "5min"
_TIME_HEADERS = {"", "timestamp", "time", "date", "datetime"}
_NAN_CELLS = {"", "na", "nan", "null", "none"}
_BLOCK_BYTES = 32 * 2**20  # one parsed block, float32
_MAX_BLOCK_ROWS = 8192

Block = tuple[np.ndarray, np.ndarray]  # values k x N x F float32, timestamps k datetime64[ns]


@dataclass
class TableSource:
    """A series known by its shape and ids, whose values are read block by block on demand."""

    num_steps: int
    sensor_ids: list[str]
    feature_names: list[str]
    blocks: Callable[[], Iterator[Block]]


def collect(source: TableSource) -> Series:
    """Fill one preallocated T x N x F array from the source's blocks."""
    out = np.empty((source.num_steps, len(source.sensor_ids), len(source.feature_names)), dtype=np.float32)
    timestamps = np.empty(source.num_steps, dtype="datetime64[ns]")
    row = 0
    for values, stamps in source.blocks():
        out[row:row + len(values)] = values
        timestamps[row:row + len(values)] = stamps
        row += len(values)
    return Series(torch.from_numpy(out), timestamps, source.sensor_ids, None, source.feature_names)


def csv_source(path: str | os.PathLike, start: str = DEFAULT_START, freq: str = DEFAULT_FREQ) -> TableSource:
    """Reads the header and counts the rows now (one cheap pass); values are parsed by `blocks()`."""
    path = existing_file(path)
    with path.open(newline="", encoding="utf-8-sig") as file:
        header = [cell.strip() for cell in next(csv.reader(file), [])]
        timed = bool(header) and header[0].lower() in _TIME_HEADERS
        # With a time column, keep its cells (8 bytes a step once parsed) to check the spacing up front.
        cells = [line.split(",", 1)[0] for line in file if line.strip()] if timed else None
        num_steps = len(cells) if timed else sum(1 for line in file if line.strip())
    sensor_ids = header[1:] if timed else header
    if not sensor_ids or num_steps == 0:
        raise UserError(f"{path}: expected a header row of sensor ids and at least one row of readings, "
                        f"found {len(sensor_ids)} ids and {num_steps} rows")
    _check_ids(path, sensor_ids, first_column=2 if timed else 1)
    timestamps = _parse_times(path, cells) if timed else regular_timestamps(start, freq, num_steps)
    rows = _block_rows(len(sensor_ids))

    def blocks() -> Iterator[Block]:
        with path.open(newline="", encoding="utf-8-sig") as file:
            next(csv.reader(file))
            lines = (line for line in file if line.strip())
            row = 0
            while chunk := list(islice(lines, rows)):
                if timed:
                    chunk = [line.split(",", 1)[1] if "," in line else "" for line in chunk]
                values = _parse_values(path, chunk, row, len(sensor_ids))
                yield values[:, :, None], timestamps[row:row + len(chunk)]
                row += len(chunk)

    return TableSource(num_steps, sensor_ids, ["value"], blocks)


def array_source(path: str | os.PathLike, key: str | None = None, axis_order: str = "TN",
                 start: str = DEFAULT_START, freq: str = DEFAULT_FREQ) -> TableSource:
    """An .npy (memory-mapped, read block by block) or .npz array seen as T x N x F."""
    order = str(axis_order).upper()
    if order not in AXIS_ORDERS:
        raise UserError(f"axis order: expected one of {', '.join(AXIS_ORDERS)}, found {axis_order!r}")
    path = existing_file(path)
    array = _load_array(path, key)
    if array.ndim != len(order):
        raise UserError(f"{path}: expected a {len(order)}-d array for axis order {order}, found shape {array.shape}")
    if array.dtype.kind not in "fiub":
        raise UserError(f"{path}: expected a numeric array, found dtype {array.dtype}")
    view = array.transpose([order.index(axis) for axis in "TNF" if axis in order])  # a view, no copy
    if view.ndim == 2:
        view = view[:, :, None]
    num_steps, num_nodes, num_features = view.shape
    timestamps = regular_timestamps(start, freq, num_steps)
    rows = _block_rows(num_nodes * num_features)

    def blocks() -> Iterator[Block]:
        for a in range(0, num_steps, rows):
            yield np.asarray(view[a:a + rows], dtype=np.float32), timestamps[a:a + rows]

    names = ["value"] + [f"value_{i}" for i in range(1, num_features)]
    return TableSource(num_steps, [str(i) for i in range(num_nodes)], names, blocks)


def _check_ids(path: Path, sensor_ids: list[str], first_column: int) -> None:
    """Every header column names one sensor, once: an empty id (a trailing comma on every row) or a
    repeated one would otherwise reach the graph check as a sensor count that does not match."""
    seen: dict[str, int] = {}
    for column, sensor in enumerate(sensor_ids, start=first_column):
        if not sensor:
            hint = " (a trailing comma on each row?)" if column == first_column + len(sensor_ids) - 1 else ""
            raise UserError(f"{path}: expected a sensor id in every header column, found an empty one in column "
                            f"{column}{hint}")
        if sensor in seen:
            raise UserError(f"{path}: expected distinct sensor ids in the header, found {sensor!r} in columns "
                            f"{seen[sensor]} and {column}")
        seen[sensor] = column


def _block_rows(values_per_row: int) -> int:
    return max(1, min(_MAX_BLOCK_ROWS, _BLOCK_BYTES // (4 * values_per_row)))


def _parse_values(path: Path, lines: list[str], first_row: int, width: int) -> np.ndarray:
    where = f"{path}: data rows {first_row + 1}-{first_row + len(lines)}"
    options = dict(delimiter=",", dtype=np.float32, comments=None, quotechar='"', ndmin=2)
    try:
        values = np.loadtxt(lines, **options)
    except ValueError:
        try:  # the slow path only for blocks with empty or NA cells
            values = np.loadtxt(lines, converters=_cell, **options)
        except ValueError as err:
            raise UserError(f"{where}: expected {width} numbers per row, found {err}") from err
    if values.shape[1] != width:
        raise UserError(f"{where}: expected {width} numbers per row (one per header id), found {values.shape[1]}")
    return values


def _cell(text: str) -> float:
    text = text.strip()
    return np.nan if text.lower() in _NAN_CELLS else float(text)


def _parse_times(path: Path, cells: list[str]) -> np.ndarray:
    try:
        stamps = np.array([cell.strip().strip('"') for cell in cells], dtype="datetime64[ns]")
    except ValueError as err:
        raise UserError(f"{path}: expected ISO timestamps like 2012-03-01T00:00 in the first column, "
                        f"found {err}") from err
    steps = np.diff(stamps)
    if len(steps) and (steps[0] <= np.timedelta64(0) or (steps != steps[0]).any()):
        bad = int(np.argmax(steps != steps[0])) if steps[0] > np.timedelta64(0) else 0
        raise UserError(f"{path}: expected evenly spaced, increasing timestamps, found {stamps[bad]} -> "
                        f"{stamps[bad + 1]} at data row {bad + 2} (first step {steps[0]})")
    return stamps


def _load_array(path: Path, key: str | None) -> np.ndarray:
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return np.load(path, mmap_mode="r")
        with np.load(path) as archive:
            names = list(archive.files)
            if key is None:
                fallback = [name for name in ("data", "x") if name in names]
                key = names[0] if len(names) == 1 else (fallback[0] if fallback else None)
            if key not in names:
                raise UserError(f"{path}: expected an array key among {names} (pass a key to choose one), "
                                f"found {key!r}")
            return archive[key]
    except (ValueError, OSError, zipfile.BadZipFile) as err:
        raise UserError(f"{path}: expected a NumPy {suffix} file of numbers, found one NumPy cannot read "
                        f"({err})") from err
