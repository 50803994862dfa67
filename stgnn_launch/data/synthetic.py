"""A PeMS-like synthetic speed series, generated chunk by chunk straight into the native HDF5 layout.

The graph: sensors every ~1.2 km along a few random roads on a plane (each road after the first leaves
from a sensor of an earlier one, so the network is connected). Distances are directed like DCRNN's road
distances: along a road in its direction of travel, up to 16 sensors ahead; on a ramp from the junction
sensor to the new road's first sensor; both ways between nearby sensors of different roads (a detour
1.4 x the straight line). DCRNN's Gaussian kernel turns them into weights, so the adjacency is NOT
symmetric and its diagonal is 1.

The speeds: a free-flow speed per sensor (55-70 mph) slowed by congestion. Congestion comes from morning
and evening rush hours (much lighter at weekends, with a midday bump instead), a random intensity per
sensor and day, and occasional incidents; it spreads to downstream sensors along the graph's edges with
a lag of 3 steps. Then Gaussian noise, and missing readings as exact zeros: ~0.5% random dropouts plus
occasional outages of a sensor for 30 min to 4 h.

Determinism: the values depend only on (num_nodes, num_steps, seed, start, freq), never on chunk_steps.
Randomness is drawn per sensor, per day and per fixed block of 1024 steps from
np.random.default_rng([seed, stream, index]), and the congestion state carried from chunk to chunk is
the last 3 steps, so any chunking yields the same bytes. Memory is one chunk (plus the N x N graph).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from stgnn_launch.data.graph import gaussian_kernel
from stgnn_launch.data.readers.hdf5_native import NativeWriter
from stgnn_launch.data.series import parse_freq, regular_timestamps
from stgnn_launch.errors import expect

GENERATOR_VERSION = 1  # part of the cache file name: bump it whenever the output changes

_SPACING_M = 1200.0  # mean distance between consecutive sensors on a road
_HOPS = 16  # along-road distances listed this many sensors ahead: ~8 kernel neighbours per sensor, as in PEMS-BAY
_LAG = 3  # steps before congestion at a sensor reaches its downstream neighbours
_SPREAD = 0.5  # share of a sensor's congestion passed downstream per lag
_SLOWDOWN = 0.65  # full congestion cuts speed to 35% of free flow
_BLOCK = 1024  # steps per block of per-step random draws
_DROPOUT = 0.005
_STREAM_GRAPH, _STREAM_SENSORS, _STREAM_DAYS, _STREAM_STEPS = range(4)


def synthetic_path(cache_dir: str | os.PathLike, num_nodes: int, num_steps: int, seed: int) -> Path:
    """Where the cached synthetic series of this size and seed lives."""
    return Path(cache_dir) / f"synthetic-v{GENERATOR_VERSION}-n{num_nodes}-t{num_steps}-seed{seed}.h5"


def ensure_synthetic(cache_dir: str | os.PathLike, num_nodes: int, num_steps: int, seed: int) -> Path:
    """The cached series, generated first if absent (racing processes each write a temp file, renamed atomically)."""
    path = synthetic_path(cache_dir, num_nodes, num_steps, seed)
    if path.is_file():
        return path
    return generate_synthetic(path, num_nodes, num_steps, seed)


def generate_synthetic(
    out: str | os.PathLike,
    num_nodes: int,
    num_steps: int,
    seed: int,
    start: str = "2012-03-01T00:00",
    freq: str = "5min",
    chunk_steps: int = 2048,
) -> Path:
    """Write a num_steps x num_nodes x 1 speed series ("speed", mph, 0 = missing) with its graph to `out`."""
    # Below 4 sensors DCRNN's kernel (sigma from so few distances) can cut the graph apart.
    expect(_is_int(num_nodes) and num_nodes >= 4, "synthetic num_nodes", "an integer >= 4", num_nodes)
    expect(_is_int(num_steps) and num_steps >= 1, "synthetic num_steps", "an integer >= 1", num_steps)
    expect(_is_int(seed) and seed >= 0, "synthetic seed", "a non-negative integer", seed)
    expect(_is_int(chunk_steps) and chunk_steps >= 1, "synthetic chunk_steps", "an integer >= 1", chunk_steps)
    num_nodes, num_steps, seed, chunk_steps = int(num_nodes), int(num_steps), int(seed), int(chunk_steps)
    origin, step = regular_timestamps(start, freq, 1)[0], parse_freq(freq)
    adjacency = gaussian_kernel(_road_distances(num_nodes, np.random.default_rng([seed, _STREAM_GRAPH])))
    width = max(3, len(str(num_nodes - 1)))
    sensor_ids = [f"S{i:0{width}d}" for i in range(num_nodes)]
    model = _Traffic(adjacency, seed, origin)
    with NativeWriter(out, num_steps, sensor_ids, ["speed"], chunk_steps, adjacency) as writer:
        for t0 in range(0, num_steps, chunk_steps):
            t1 = min(t0 + chunk_steps, num_steps)
            timestamps = origin + np.arange(t0, t1, dtype=np.int64) * step
            writer.write(model.speeds(t0, timestamps)[:, :, None], timestamps)
    return Path(out)


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _road_distances(num_nodes: int, rng: np.random.Generator) -> np.ndarray:
    """Directed road distances in metres (inf = no listed road), N x N, sensors numbered road by road."""
    sizes = [len(part) for part in np.array_split(np.arange(num_nodes), max(1, round(np.sqrt(num_nodes) / 2)))]
    xy = np.zeros((num_nodes, 2))
    heading = np.zeros(num_nodes)
    road = np.repeat(np.arange(len(sizes)), sizes)
    distances = np.full((num_nodes, num_nodes), np.inf, dtype=np.float32)
    np.fill_diagonal(distances, 0)
    first = 0
    for size in sizes:
        gaps = _SPACING_M * rng.uniform(0.8, 1.2, size)
        if first == 0:
            junction, origin, turn = None, np.zeros(2), rng.uniform(0, 2 * np.pi)
        else:  # branch off a sensor of an earlier road, roughly at a right angle
            junction = int(rng.integers(0, first))
            origin = xy[junction]
            turn = heading[junction] + rng.choice([-1, 1]) * rng.uniform(np.pi / 3, 2 * np.pi / 3)
        sensors = np.arange(first, first + size)
        heading[sensors] = turn + np.cumsum(rng.normal(0, 0.15, size))
        xy[sensors] = origin + np.cumsum(gaps[:, None] * np.c_[np.cos(heading[sensors]), np.sin(heading[sensors])], 0)
        arc = np.cumsum(gaps)
        for hop in range(1, min(_HOPS, size - 1) + 1):
            distances[sensors[:-hop], sensors[hop:]] = arc[hop:] - arc[:-hop]
        if junction is not None:
            distances[junction, first] = gaps[0]
        first += size
    # Nearby sensors of different roads, in row blocks so memory stays a few rows of N.
    for lo in range(0, num_nodes, 1024):
        rows = slice(lo, min(lo + 1024, num_nodes))
        straight = np.linalg.norm(xy[rows, None, :] - xy[None, :, :], axis=-1)
        near = (straight < 1.5 * _SPACING_M) & (road[rows, None] != road[None, :])
        block = distances[rows]
        block[near] = np.minimum(block[near], 1.4 * straight[near])
    return distances


class _Traffic:
    """Per-sensor parameters plus the congestion of the last _LAG steps, carried from chunk to chunk."""

    def __init__(self, adjacency: np.ndarray, seed: int, origin: np.datetime64) -> None:
        n = adjacency.shape[0]
        self._n, self._seed = n, seed
        self._first_day = origin.astype("datetime64[D]")
        rng = np.random.default_rng([seed, _STREAM_SENSORS])
        self._free_flow = rng.uniform(55, 70, n)
        self._morning = (rng.uniform(0.15, 0.9, n), 8.0 + rng.normal(0, 0.4, n), 0.9)  # amplitude, hour, width h
        self._evening = (rng.uniform(0.15, 0.9, n), 17.5 + rng.normal(0, 0.5, n), 1.2)
        self._noise_sd = rng.uniform(0.8, 2.0, n)
        # Each sensor passes its congestion to its out-neighbours in proportion to the edge weights.
        weights = adjacency.astype(np.float64)
        np.fill_diagonal(weights, 0)
        self._src, self._dst = np.nonzero(weights)
        out_weight = weights.sum(axis=1)
        self._share = weights[self._src, self._dst] / out_weight[self._src]
        self._slots = (np.arange(_LAG)[:, None] * n + self._dst).ravel()  # bincount bins for _LAG rows
        self._state = np.zeros((_LAG, n))

    def speeds(self, t0: int, timestamps: np.ndarray) -> np.ndarray:
        """Speeds (k x N float32, 0 = missing) for the next k steps, which start at global step t0."""
        days = timestamps.astype("datetime64[D]")
        hour = ((timestamps - days) / np.timedelta64(1, "h"))[:, None]
        weekend = ((days.view(np.int64) + 3) % 7 >= 5)[:, None]  # 1970-01-01 was a Thursday
        day = (days - self._first_day).astype(np.int64)
        factor, incident, outage = self._days(day.min(), day.max())
        rows = day - day.min()
        rush = _bump(hour, *self._morning) + _bump(hour, *self._evening)
        demand = np.where(weekend, 0.25 * rush + _bump(hour, 0.2, 14.0, 2.5), rush) * factor[rows]
        source = np.clip(demand + _window(hour, incident, rows), 0, 1)
        congestion = self._propagate(source)
        noise, dropout = self._steps(t0, t0 + len(timestamps))
        speed = self._free_flow * (1 - _SLOWDOWN * congestion) + noise * self._noise_sd * (1 + congestion)
        speed = np.clip(speed, 2, 85).astype(np.float32)
        speed[dropout | (_window(hour, outage, rows) > 0)] = 0
        return speed

    def _days(self, first: int, last: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per day and sensor: demand factor, incident windows (start h, length h, severity), outage windows."""
        factors, incidents, outages = [], [], []
        for day in range(first, last + 1):
            rng = np.random.default_rng([self._seed, _STREAM_DAYS, day])
            n = self._n
            factors.append(rng.uniform(0.75, 1.25, n))
            hit = rng.random(n) < 0.02
            incidents.append((rng.uniform(0, 24, n), rng.uniform(0.5, 1.5, n), hit * rng.uniform(0.5, 1.0, n)))
            down = rng.random(n) < 0.02
            outages.append((rng.uniform(0, 24, n), rng.uniform(0.5, 4.0, n), down * 1.0))
        return np.array(factors), np.array(incidents), np.array(outages)

    def _propagate(self, source: np.ndarray) -> np.ndarray:
        """congestion[t] = clip(source[t] + _SPREAD * inflow(congestion[t - _LAG])), _LAG rows at a time."""
        k, n = source.shape
        congestion = np.concatenate([self._state, source])  # row _LAG + i is step i of this chunk
        for a in range(0, k, _LAG):
            b = min(a + _LAG, k)
            sent = congestion[a:b, self._src] * self._share
            # bincount sums each bin in edge order, whatever b - a: the same bytes for any chunking.
            inflow = np.bincount(self._slots[: sent.size], sent.ravel(), minlength=(b - a) * n).reshape(b - a, n)
            congestion[_LAG + a:_LAG + b] = np.clip(source[a:b] + _SPREAD * inflow, 0, 1)
        self._state = congestion[-_LAG:].copy()
        return congestion[_LAG:]

    def _steps(self, t0: int, t1: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-step noise and dropouts for steps [t0, t1), cut from fixed blocks of _BLOCK steps."""
        noise, dropout = [], []
        for block in range(t0 // _BLOCK, (t1 - 1) // _BLOCK + 1):
            rng = np.random.default_rng([self._seed, _STREAM_STEPS, block])
            noise.append(rng.standard_normal((_BLOCK, self._n), dtype=np.float32))
            dropout.append(rng.random((_BLOCK, self._n), dtype=np.float32) < _DROPOUT)
        cut = slice(t0 % _BLOCK, t0 % _BLOCK + t1 - t0)
        return np.concatenate(noise)[cut], np.concatenate(dropout)[cut]


def _bump(hour: np.ndarray, amplitude: np.ndarray | float, center: np.ndarray | float, width: float) -> np.ndarray:
    return amplitude * np.exp(-0.5 * np.square((hour - center) / width))


def _window(hour: np.ndarray, events: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The event's value (3rd field) while hour is inside [start, start + length) of that row's day, else 0."""
    start, length, value = (events[:, i][rows] for i in range(3))
    return np.where((hour >= start) & (hour < start + length), value, 0.0)
