"""The in-memory series every reader produces and everything downstream consumes."""

from __future__ import annotations

from dataclasses import InitVar, dataclass, field

import numpy as np
import torch

from stgnn_launch.data.graph import SparseGraph, as_sparse_graph
from stgnn_launch.errors import UserError


RESIDENT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # readers produce float32


@dataclass
class Series:
    """One copy of a sensor network's readings.

    values:      T x N x F float32 tensor (F measured features, e.g. speed; missing readings are 0 or NaN)
    timestamps:  T datetime64[ns] array, evenly spaced
    sensor_ids:  N strings, the column order of `values`
    graph:       the weighted graph in the same sensor order as a SparseGraph (a dense N x N array is
                 converted), or None until a graph is attached; `adjacency` is its dense form
    feature_names: F names (default "value", "value_1", ...)
    """

    values: torch.Tensor
    timestamps: np.ndarray
    sensor_ids: list[str]
    graph: SparseGraph | np.ndarray | None = None
    feature_names: list[str] = field(default_factory=list)
    # False only for a time shard's pieces joined on purpose (each piece was checked as it was read)
    regular_time: InitVar[bool] = True

    def __post_init__(self, regular_time: bool = True) -> None:
        if self.values.ndim != 3 or self.values.dtype not in RESIDENT_DTYPES:
            raise UserError(
                f"series values: expected a T x N x F float32 (or resident bfloat16/float16) tensor, found shape "
                f"{tuple(self.values.shape)} "
                f"dtype {self.values.dtype}"
            )
        t, n, f = self.values.shape
        self.timestamps = np.asarray(self.timestamps).astype("datetime64[ns]")
        if self.timestamps.shape != (t,):
            raise UserError(f"series timestamps: expected {t} (one per step), found {self.timestamps.shape[0]}")
        if regular_time:
            check_regular(self.timestamps, "series timestamps")  # every reader's, whatever it checked itself
        self.sensor_ids = [str(s) for s in self.sensor_ids]
        if len(self.sensor_ids) != n:
            raise UserError(f"series sensor ids: expected {n} (one per column), found {len(self.sensor_ids)}")
        if len(set(self.sensor_ids)) != n:
            repeated = next(s for i, s in enumerate(self.sensor_ids) if s in self.sensor_ids[:i])
            raise UserError(f"series sensor ids: expected {n} distinct ids, found {repeated!r} more than once")
        if not self.feature_names:
            self.feature_names = ["value"] + [f"value_{i}" for i in range(1, f)]
        if len(self.feature_names) != f:
            raise UserError(f"series feature names: expected {f}, found {len(self.feature_names)}")
        if self.graph is not None:
            self.graph = as_sparse_graph(self.graph)
            if self.graph.num_nodes != n:
                raise UserError(
                    f"graph adjacency: expected {n} x {n} to match the series' {n} sensors, "
                    f"found {self.graph.num_nodes} x {self.graph.num_nodes}"
                )

    @property
    def adjacency(self) -> np.ndarray | None:
        """The graph as a dense N x N float32 matrix (small graphs; None without a graph)."""
        return None if self.graph is None else self.graph.dense()

    @property
    def num_steps(self) -> int:
        return self.values.shape[0]

    @property
    def num_nodes(self) -> int:
        return self.values.shape[1]

    @property
    def num_features(self) -> int:
        return self.values.shape[2]

    @property
    def step(self) -> np.timedelta64:
        """The sampling interval (taken from the first two timestamps)."""
        if self.num_steps < 2:
            return np.timedelta64(0, "ns")
        return self.timestamps[1] - self.timestamps[0]

    @property
    def nbytes(self) -> int:
        return self.values.element_size() * self.values.nelement()


def check_regular(stamps: np.ndarray, where: str, chunk: int = 4096) -> None:
    """Windows, time of day and the split assume one fixed step: refuse duplicated, decreasing or unevenly
    spaced timestamps, naming the first offending pair (in blocks: no T-long temporaries)."""
    stamps = np.asarray(stamps).astype("datetime64[ns]", copy=False)
    ns = stamps.view(np.int64)
    if len(ns) < 2:
        return
    step = ns[1] - ns[0]
    for lo in range(0, len(ns) - 1, chunk):
        off = np.flatnonzero(np.diff(ns[lo:lo + chunk + 1]) != step) if step > 0 else np.zeros(1, dtype=np.int64)
        if len(off):
            bad = lo + int(off[0])
            pair = np.datetime_as_string(stamps[bad:bad + 2], unit="s")
            raise UserError(f"{where}: expected evenly spaced, increasing timestamps, found {pair[0]} -> "
                            f"{pair[1]} at step {bad + 1} (first step {np.timedelta64(step, 'ns').astype('timedelta64[s]')})")


def regular_timestamps(start: str, freq: str, steps: int) -> np.ndarray:
    """`steps` evenly spaced datetime64[ns] from `start` every `freq` (e.g. '5min', '1h', '30s')."""
    try:
        origin = np.datetime64(start, "ns")
    except ValueError as err:
        raise UserError(f"dataset.start (--start): expected an ISO date like 2012-03-01T00:00, found {start!r}") from err
    return origin + np.arange(steps, dtype=np.int64) * parse_freq(freq)


_UNITS = {"s": "s", "sec": "s", "min": "m", "m": "m", "t": "m", "h": "h", "d": "D", "ms": "ms"}


def parse_freq(freq: str) -> np.timedelta64:
    """'5min' -> numpy timedelta; accepts s, min (or m/T), h, d, ms with an optional integer count."""
    text = str(freq).strip().lower()
    digits = "".join(ch for ch in text if ch.isdigit())
    unit = text[len(digits):]
    if not text.startswith(digits) or unit not in _UNITS:
        raise UserError(f"dataset.freq (--freq): expected a count and unit like '5min', '1h', '30s', found {freq!r}")
    count = int(digits) if digits else 1
    if count <= 0:
        raise UserError(f"dataset.freq (--freq): expected a positive step, found {freq!r}")
    return np.timedelta64(count, _UNITS[unit]).astype("timedelta64[ns]")
