"""Reader for pandas HDFStore "fixed" frames (the published METR-LA / PEMS-BAY .h5 files), h5py only.

Layout of one frame, group /<key> (attrs pandas_type = "frame", nblocks):
    axis0            N column labels (bytes or integers): the sensor ids
    axis1            T int64 timestamps; attr `kind` names the unit: "datetime64" (nanoseconds, older
                     pandas) or "datetime64[us]" / "[ms]" / "[s]" / "[ns]" (newer pandas)
    block<i>_items   the columns held by block i, a subset of axis0 (one block per dtype)
    block<i>_values  T x len(items) numbers (pandas stores them time-major)
pandas is not needed at run time: the values are streamed straight into one float32 array.
Timezone-aware indexes are stored in UTC and come back as naive UTC timestamps.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from stgnn_launch.data.readers.hdf5_native import Allocator
from stgnn_launch.data.series import Series, check_regular
from stgnn_launch.errors import UserError

# Rows per read: a read buffer stays a few percent of the final array, and at most 8192 rows.
_CHUNK_ROWS = 8192
_NS_PER_UNIT = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}
_KIND = re.compile(r"datetime64(?:\[(\w+)(?:,[^\]]*)?\])?")


def open_hdf5(path: str | os.PathLike) -> h5py.File:
    """Open an HDF5 file for reading; a missing or non-HDF5 file is a UserError naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: expected an existing HDF5 file, found nothing there")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise UserError(f"{path}: expected an HDF5 file, found a file HDF5 cannot open ({err})") from err


def frame_keys(file: h5py.File) -> list[str]:
    """Keys ("/df", "/speed", "/a/b", ...) of every pandas object stored in the file."""
    keys: list[str] = []

    def visit(name: str, obj: h5py.HLObject) -> None:
        if isinstance(obj, h5py.Group) and "pandas_type" in obj.attrs:
            keys.append("/" + name)

    file.visititems(visit)
    return keys


def is_pandas_hdf(file: h5py.File) -> bool:
    return bool(frame_keys(file))


@dataclass
class _Frame:
    name: str
    axis1: h5py.Dataset
    sensor_ids: list[str]
    blocks: list[tuple[h5py.Dataset, list[int]]]  # values dataset, column of the result for each of its columns

    @property
    def num_steps(self) -> int:
        return self.axis1.shape[0]


def read_pandas_hdf(path: str | os.PathLike, key: str | None = None, start: int = 0,
                    stop: int | None = None, alloc: Allocator | None = None) -> Series:
    """Read steps [start, stop) of a pandas fixed-format frame into a T x N x 1 float32 series (into the
    array `alloc` returns, e.g. a shared-memory segment, when given)."""
    path = Path(path)
    with open_hdf5(path) as file:
        frame = _open_frame(file, path, key)
        total = frame.num_steps
        stop = total if stop is None else min(stop, total)
        if not 0 <= start < stop:
            raise UserError(f"{path} key {frame.name}: expected a time range inside [0, {total}), "
                            f"found [{start}, {stop})")
        timestamps = _timestamps(frame, path, start, stop)
        shape = (stop - start, len(frame.sensor_ids), 1)
        out = alloc(shape) if alloc else np.empty(shape, dtype=np.float32)
        flat = out.reshape(out.shape[:2])  # a view (F == 1): HDF5 writes into it in place
        rows = min(_CHUNK_ROWS, max(256, total // 32))
        for values, cols in frame.blocks:
            _read_block(values, cols, flat, start, stop, rows)
    return Series(torch.from_numpy(out), timestamps, frame.sensor_ids)


def pandas_hdf_shape(path: str | os.PathLike, key: str | None = None) -> tuple[int, int, int]:
    """T, N, F (always 1) of a pandas frame without reading its values."""
    path = Path(path)
    with open_hdf5(path) as file:
        frame = _open_frame(file, path, key)
        return frame.num_steps, len(frame.sensor_ids), 1


def _read_block(values: h5py.Dataset, cols: list[int], flat: np.ndarray, start: int, stop: int,
                rows: int) -> None:
    lo = cols[0]
    # Float columns in axis0 order: HDF5 converts to float32 while reading, no buffer in between.
    direct = values.dtype.kind == "f" and cols == list(range(lo, lo + len(cols)))
    buffer = None if direct else np.empty((min(rows, stop - start), len(cols)), dtype=values.dtype)
    for a in range(start, stop, rows):
        b = min(a + rows, stop)
        if direct:
            values.read_direct(flat, np.s_[a:b], np.s_[a - start:b - start, lo:lo + len(cols)])
        else:
            part = buffer[: b - a]
            values.read_direct(part, np.s_[a:b])
            flat[a - start:b - start, cols] = part


def _open_frame(file: h5py.File, path: Path, key: str | None) -> _Frame:
    keys = frame_keys(file)
    if not keys:
        raise UserError(f"{path}: expected a pandas HDFStore file (a group with a pandas_type attribute), "
                        f"found top level {sorted(file.keys())}")
    if key is None:
        if len(keys) > 1:
            raise UserError(f"{path}: expected one pandas object or a key to choose one, found keys {keys}")
        name = keys[0]
    else:
        name = "/" + key.strip("/")
        if name not in keys:
            raise UserError(f"{path}: expected key {key!r} to be one of {keys}, found no such key")
    group = file[name]
    where = f"{path} key {name}"
    kind = _text(group.attrs["pandas_type"])
    if kind == "frame_table":
        raise UserError(f"{where}: expected pandas 'fixed' format, found 'table' format, which is not "
                        f"supported (re-save it with df.to_hdf(path, key=..., format='fixed'))")
    if kind != "frame":
        raise UserError(f"{where}: expected a pandas DataFrame (pandas_type 'frame'), found {kind!r}")
    nblocks = int(group.attrs.get("nblocks", 0))
    expected = ["axis0", "axis1"] + [f"block{i}_{part}" for i in range(nblocks) for part in ("items", "values")]
    missing = [n for n in expected if n not in group]
    if missing or nblocks == 0:
        raise UserError(f"{where}: expected datasets {expected}, found {sorted(group.keys())}")
    sensor_ids = _labels(group["axis0"], where)
    axis1 = group["axis1"]
    position = {s: i for i, s in enumerate(sensor_ids)}
    blocks = []
    for i in range(nblocks):
        values, items = group[f"block{i}_values"], _labels(group[f"block{i}_items"], where)
        if values.dtype.kind not in "fiub":
            raise UserError(f"{where}: expected numeric columns, found block{i}_values of dtype {values.dtype} "
                            f"(columns {items[:5]})")
        if values.shape != (axis1.shape[0], len(items)):
            raise UserError(f"{where}: expected block{i}_values of shape {(axis1.shape[0], len(items))} "
                            f"(steps x columns), found {values.shape}")
        unknown = [s for s in items if s not in position]
        if unknown:
            raise UserError(f"{where}: expected block{i}_items to be columns in axis0, found {unknown[:5]}")
        if items:
            blocks.append((values, [position[s] for s in items]))
    covered = sorted(c for _, cols in blocks for c in cols)
    if covered != list(range(len(sensor_ids))):
        raise UserError(f"{where}: expected the blocks to hold each of the {len(sensor_ids)} columns once, "
                        f"found {len(covered)} block columns")
    return _Frame(name, axis1, sensor_ids, blocks)


def _timestamps(frame: _Frame, path: Path, start: int, stop: int) -> np.ndarray:
    kind = _text(frame.axis1.attrs.get("kind", b""))
    match = _KIND.fullmatch(kind)
    unit = (match.group(1) or "ns") if match else None
    if unit not in _NS_PER_UNIT or frame.axis1.dtype != np.int64:
        raise UserError(f"{path} key {frame.name}: expected a datetime index (axis1 int64 of kind "
                        f"'datetime64[...]'), found kind {kind!r} dtype {frame.axis1.dtype}")
    raw = frame.axis1[start:stop]
    raw *= _NS_PER_UNIT[unit]  # in place: no second T-long array
    check_regular(raw.view("datetime64[ns]"), f"{path} key {frame.name}")  # as the CSV reader refuses them
    return raw.view("datetime64[ns]")


def _labels(dataset: h5py.Dataset, where: str) -> list[str]:
    kind = dataset.dtype.kind
    if kind == "O":
        raise UserError(f"{where}: expected string or integer column labels in {dataset.name}, found pickled "
                        f"Python objects (mixed label types), which are not unpickled for safety")
    if kind not in "SUiu":
        raise UserError(f"{where}: expected string or integer column labels in {dataset.name}, "
                        f"found dtype {dataset.dtype}")
    return [_text(v) for v in dataset[()]]


def _text(value: object) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
