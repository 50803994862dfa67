"""The synthetic PeMS-like generator: deterministic, traffic-shaped, written in one chunk's memory."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import h5py
import numpy as np
import pytest

from stgnn_launch.data.readers.hdf5_native import read_native
from stgnn_launch.data.series import Series
from stgnn_launch.data.synthetic import ensure_synthetic, generate_synthetic, synthetic_path
from stgnn_launch.errors import UserError

NODES, STEPS = 40, 4032  # two weeks of 5-minute steps


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> Series:
    return read_native(generate_synthetic(tmp_path_factory.mktemp("syn") / "s.h5", NODES, STEPS, seed=7))


def _raw(path: Path) -> bytes:
    with h5py.File(path, "r") as file:
        return file["values"][()].tobytes() + file["adjacency"][()].tobytes()


def test_deterministic_per_seed_whatever_the_chunking(tmp_path: Path) -> None:
    a = generate_synthetic(tmp_path / "a.h5", 12, 700, seed=1, chunk_steps=256)
    b = generate_synthetic(tmp_path / "b.h5", 12, 700, seed=1, chunk_steps=97)
    c = generate_synthetic(tmp_path / "c.h5", 12, 700, seed=2, chunk_steps=256)
    assert _raw(a) == _raw(b)
    assert _raw(a) != _raw(c)


def test_shape_ids_and_timestamps(series: Series) -> None:
    assert tuple(series.values.shape) == (STEPS, NODES, 1)
    assert series.feature_names == ["speed"]
    assert series.sensor_ids[0] == "S000" and series.sensor_ids[-1] == f"S{NODES - 1:03d}"
    assert series.timestamps[0] == np.datetime64("2012-03-01T00:00")
    assert np.all(np.diff(series.timestamps) == np.timedelta64(5, "m"))


def test_missing_readings_are_rare_zeros(series: Series) -> None:
    values = series.values.numpy()
    share = float((values == 0).mean())
    assert 0 < share < 0.05
    assert values[values > 0].min() > 1 and values.max() < 90


def _hours_and_weekend(series: Series) -> tuple[np.ndarray, np.ndarray]:
    days = series.timestamps.astype("datetime64[D]")
    hours = (series.timestamps - days) / np.timedelta64(1, "h")
    return hours, (days.view(np.int64) + 3) % 7 >= 5


def _mean_speed(series: Series, rows: np.ndarray) -> float:
    values = series.values.numpy()[rows]
    return float(values[values > 0].mean())


def test_rush_hours_slower_than_night_and_weekdays_than_weekends(series: Series) -> None:
    hours, weekend = _hours_and_weekend(series)
    rush = ~weekend & (((hours >= 7) & (hours < 9)) | ((hours >= 16.5) & (hours < 18.5)))
    night = (hours >= 1) & (hours < 4)
    assert _mean_speed(series, rush) < _mean_speed(series, night) - 10
    assert _mean_speed(series, ~weekend) < _mean_speed(series, weekend) - 1


def test_daily_periodicity(series: Series) -> None:
    speed = series.values.numpy()[:, 0, 0].astype(np.float64)
    speed[speed == 0] = speed[speed > 0].mean()
    speed -= speed.mean()

    def autocorrelation(lag: int) -> float:
        return float((speed[:-lag] * speed[lag:]).mean() / speed.var())

    assert autocorrelation(288) > autocorrelation(144) + 0.3


def test_graph_is_directed_connected_with_unit_diagonal(series: Series) -> None:
    adjacency = series.adjacency
    assert adjacency.shape == (NODES, NODES)
    assert np.all(np.diag(adjacency) == 1)
    assert adjacency.min() >= 0 and adjacency.max() <= 1
    assert not np.array_equal(adjacency, adjacency.T)  # directed road distances, as in METR-LA
    linked = (adjacency > 0) | (adjacency.T > 0)
    reached = np.zeros(NODES, dtype=bool)
    reached[0] = True
    for _ in range(NODES):
        reached |= linked[reached].any(axis=0)
    assert reached.all()


def test_memory_does_not_grow_with_length(tmp_path: Path) -> None:
    peaks = []
    for steps in (5000, 20000):
        tracemalloc.start()
        generate_synthetic(tmp_path / f"{steps}.h5", 20, steps, seed=0, chunk_steps=512)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] / peaks[0] < 1.5


def test_ensure_synthetic_caches(tmp_path: Path) -> None:
    path = ensure_synthetic(tmp_path, 8, 300, seed=3)
    assert path == synthetic_path(tmp_path, 8, 300, seed=3) and path.is_file()
    stamp = path.stat().st_mtime_ns
    assert ensure_synthetic(tmp_path, 8, 300, seed=3).stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind


def test_bad_sizes_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="num_nodes"):
        generate_synthetic(tmp_path / "x.h5", 3, 100, seed=0)
    with pytest.raises(UserError, match="seed"):
        generate_synthetic(tmp_path / "x.h5", 10, 100, seed=-1)
