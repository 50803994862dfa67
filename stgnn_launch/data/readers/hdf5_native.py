"""stgnn-launch's own HDF5 layout: any number of features, chunked along time, written in pieces.

Layout (version 1):
    /              attrs: layout = "stgnn-launch-series", version = 1
    /values        float32, T x N x F, chunks of (chunk_steps, N, F)
    /timestamps    int64, T, nanoseconds since the Unix epoch (UTC, naive)
    /sensor_ids    UTF-8 strings, N
    /feature_names UTF-8 strings, F
    /adjacency     float32, N x N (optional; same sensor order)

Chunking along time lets a reader take any time range (a rank's shard) without reading the rest.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import torch

from stgnn_launch.atomic_write import remove_dead_temporaries, temp_path_beside
from stgnn_launch.data.graph import SparseGraph, as_sparse_graph
from stgnn_launch.data.series import Series
from stgnn_launch.errors import UserError, disk_full, free_bytes, is_disk_full

Allocator = Callable[[tuple[int, ...]], np.ndarray]  # shape -> a float32 array to read into

LAYOUT = "stgnn-launch-series"
VERSION = 1
_STR = h5py.string_dtype("utf-8")


class NativeWriter:
    """Writes a series block by block into a temporary file, renamed into place on `close()`.

    Memory use is one block, whatever T; a crash leaves no half-written file under the final name.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        num_steps: int,
        sensor_ids: list[str],
        feature_names: list[str],
        chunk_steps: int = 2048,
        graph: SparseGraph | np.ndarray | None = None,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_dead_temporaries(self.path.parent)  # a killed conversion's or generation's leftovers
        self._tmp = temp_path_beside(self.path)
        n, f = len(sensor_ids), len(feature_names)
        # HDF5 fails late on a full disk (at close, in C, where it can even crash the interpreter): check first
        needed = num_steps * (n * f * 4 + 8) + (n * n * 4 if graph is not None else 0) + 64 * (n + f) + 2**20
        free = free_bytes(self.path.parent)
        if free is not None and free < needed:
            raise disk_full(self.path, needed)
        self._file = h5py.File(self._tmp, "w")
        self._file.attrs["layout"] = LAYOUT
        self._file.attrs["version"] = VERSION
        chunk = (max(1, min(chunk_steps, num_steps)), n, f)
        self._values = self._file.create_dataset("values", (num_steps, n, f), dtype="float32", chunks=chunk)
        self._times = self._file.create_dataset("timestamps", (num_steps,), dtype="int64")
        self._file.create_dataset("sensor_ids", data=np.array([str(s) for s in sensor_ids], dtype=object), dtype=_STR)
        self._file.create_dataset("feature_names", data=np.array(feature_names, dtype=object), dtype=_STR)
        if graph is not None:  # stored dense (the layout's N x N), written a block of rows at a time
            graph = as_sparse_graph(graph)
            stored = self._file.create_dataset("adjacency", (n, n), dtype="float32",
                                               chunks=(min(n, max(1, 2**20 // n)), n))
            for start in range(0, n, stored.chunks[0]):
                stop = min(n, start + stored.chunks[0])
                stored[start:stop] = graph.dense_rows(start, stop)
        self._num_steps = num_steps
        self._written = 0

    def write(self, values: np.ndarray, timestamps: np.ndarray) -> None:
        """Append the next block: values k x N x F, timestamps k (datetime64 or int64 ns)."""
        k = values.shape[0]
        end = self._written + k
        if end > self._num_steps:
            raise ValueError(f"writer got {end} steps, more than the {self._num_steps} declared")
        self._values[self._written:end] = values
        self._times[self._written:end] = np.asarray(timestamps).astype("datetime64[ns]").view(np.int64)
        self._written = end

    def close(self) -> Path:
        try:
            self._file.close()
        except OSError as err:  # what the check above missed (another writer filled the disk meanwhile)
            self._tmp.unlink(missing_ok=True)
            if is_disk_full(err) or "No space" in str(err):
                raise disk_full(self.path, None, err) from None
            raise
        if self._written != self._num_steps:
            self._tmp.unlink(missing_ok=True)
            raise ValueError(f"writer closed after {self._written} of {self._num_steps} steps")
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        try:
            self._file.close()
        except OSError:
            pass  # a full disk again: the temporary file goes either way
        finally:
            self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> "NativeWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def is_native(file: h5py.File) -> bool:
    return file.attrs.get("layout") == LAYOUT


def write_series(path: str | os.PathLike, series: Series, chunk_steps: int = 2048) -> Path:
    """Write a whole in-memory series in the native layout (block by block, atomically)."""
    with NativeWriter(path, series.num_steps, series.sensor_ids, series.feature_names, chunk_steps,
                      series.graph) as writer:
        values = series.values.numpy()
        for start in range(0, series.num_steps, chunk_steps):
            stop = min(start + chunk_steps, series.num_steps)
            writer.write(values[start:stop], series.timestamps[start:stop])
    return Path(path)


def read_native(path: str | os.PathLike, start: int = 0, stop: int | None = None,
                alloc: Allocator | None = None) -> Series:
    """Read steps [start, stop) of a native file straight into one float32 array (from `alloc`, e.g. a
    shared-memory segment, when given)."""
    path = Path(path)
    with h5py.File(path, "r") as file:
        if not is_native(file):
            raise UserError(f"{path}: expected an HDF5 file in the {LAYOUT} layout, found attrs {dict(file.attrs)}")
        version = int(file.attrs.get("version", -1))
        if version != VERSION:
            raise UserError(f"{path}: expected {LAYOUT} version {VERSION}, found version {version}")
        values = file["values"]
        total = values.shape[0]
        stop = total if stop is None else min(stop, total)
        if not 0 <= start < stop:
            raise UserError(f"{path}: expected a time range inside [0, {total}), found [{start}, {stop})")
        out = (alloc or _empty)((stop - start,) + values.shape[1:])
        values.read_direct(out, np.s_[start:stop])
        timestamps = file["timestamps"][start:stop].view("datetime64[ns]")
        sensor_ids = [s.decode() if isinstance(s, bytes) else str(s) for s in file["sensor_ids"][()]]
        names = [s.decode() if isinstance(s, bytes) else str(s) for s in file["feature_names"][()]]
        graph = None
        if "adjacency" in file:  # straight to an edge list, block by block: never N x N in memory
            stored = file["adjacency"]
            if stored.ndim != 2 or stored.shape[0] != stored.shape[1]:
                raise UserError(f"{path}: expected a square N x N /adjacency, found shape {stored.shape}")
            graph = SparseGraph.from_row_blocks(stored.shape[0], lambda a, b: stored[a:b])
    return Series(torch.from_numpy(out), timestamps, sensor_ids, graph, names)


def native_shape(path: str | os.PathLike) -> tuple[int, int, int]:
    """T, N, F of a native file without reading its values."""
    with h5py.File(path, "r") as file:
        return tuple(file["values"].shape)  # type: ignore[return-value]


def _empty(shape: tuple[int, ...]) -> np.ndarray:
    return np.empty(shape, dtype=np.float32)
