"""Series readers: pandas HDFStore frames, native HDF5, CSV, NPY/NPZ, the conversion cache, error messages."""

from __future__ import annotations

import os
import tracemalloc
import warnings
from pathlib import Path

import h5py
import numpy as np
import pandas as pd  # test extra: writes the published HDFStore layout (through PyTables)
import pytest
import torch

from helpers import shared_file
from stgnn_launch.data import readers as load_module
from stgnn_launch.data.readers.hdf5_native import write_series
from stgnn_launch.data.readers.hdf5_pandas import pandas_hdf_shape, read_pandas_hdf
from stgnn_launch.data.readers import convert_to_native, load_series, read_series
from stgnn_launch.data.series import Series
from stgnn_launch.data.summary import describe_graph, describe_series
from stgnn_launch.data.readers.tabular import AXIS_ORDERS
from stgnn_launch.errors import UserError

IDS = ["773869", "767541", "767542", "717447", "717446", "717445"]


def _frame(pd, steps: int = 300, unit: str = "ns", columns: list[str] = IDS):
    rng = np.random.default_rng(0)
    values = rng.uniform(1, 70, size=(steps, len(columns)))
    values[rng.random(values.shape) < 0.05] = 0.0  # missing readings, DCRNN style
    values[rng.random(values.shape) < 0.05] = np.nan
    index = pd.date_range("2012-03-01", periods=steps, freq="5min", unit=unit)
    return pd.DataFrame(values, index=index, columns=columns)


def _kind(path: Path, key: str) -> str:
    with h5py.File(path, "r") as file:
        kind = file[key]["axis1"].attrs["kind"]
    return kind.decode() if isinstance(kind, bytes) else str(kind)


def _assert_matches_frame(series: Series, df) -> None:
    np.testing.assert_array_equal(series.values[:, :, 0].numpy(), df.to_numpy().astype(np.float32))
    np.testing.assert_array_equal(series.timestamps, df.index.to_numpy().astype("datetime64[ns]"))
    assert series.sensor_ids == [str(c) for c in df.columns]
    assert series.values.dtype == torch.float32


# --- pandas HDFStore, fixed format -----------------------------------------------------------------

@pytest.mark.parametrize("unit", ["ns", "us"])
@pytest.mark.parametrize("key", ["df", "speed"])
def test_pandas_fixed_frame_matches_pandas(tmp_path, unit, key):
    path = tmp_path / "metr-la.h5"
    _frame(pd, unit=unit).to_hdf(path, key=key, format="fixed")
    assert _kind(path, key) == f"datetime64[{unit}]"  # the layout this case is meant to cover
    series = read_pandas_hdf(path)  # the only key is found without naming it
    _assert_matches_frame(series, pd.read_hdf(path, key))
    assert (series.values == 0).any() and torch.isnan(series.values).any()
    assert pandas_hdf_shape(path, key) == (300, len(IDS), 1)


@pytest.mark.parametrize("kind", [b"datetime64", "datetime64"])
def test_pandas_bare_datetime64_kind_means_nanoseconds(tmp_path, kind):
    """Files of the METR-LA era say just 'datetime64'; pandas 3 no longer writes that, so build one by hand."""
    path = tmp_path / "old.h5"
    stamps = np.datetime64("2012-03-01T00:00", "ns") + np.arange(5) * np.timedelta64(5, "m")
    values = np.arange(10.0).reshape(5, 2)
    with h5py.File(path, "w") as file:
        group = file.create_group("df")
        for name, value in dict(pandas_type="frame", nblocks=1, ndim=2, axis0_variety="regular",
                                axis1_variety="regular", block0_items_variety="regular").items():
            group.attrs[name] = value
        datasets = {"axis0": np.array([b"717447", b"717446"]), "axis1": stamps.view(np.int64),
                    "block0_items": np.array([b"717447", b"717446"]), "block0_values": values}
        for name, data in datasets.items():
            group.create_dataset(name, data=data).attrs["transposed"] = np.uint8(1)
        group["axis1"].attrs["kind"] = kind
        group["axis0"].attrs["kind"] = group["block0_items"].attrs["kind"] = "string"
    series = read_pandas_hdf(path, key="df")
    np.testing.assert_array_equal(series.timestamps, stamps)
    np.testing.assert_array_equal(series.values[:, :, 0].numpy(), values.astype(np.float32))
    assert series.sensor_ids == ["717447", "717446"]
    if isinstance(kind, str):  # pandas reads str attributes only: confirm the hand-made layout is faithful
        _assert_matches_frame(series, pd.read_hdf(path, "df"))


def test_pandas_mixed_blocks_and_integer_labels(tmp_path):
    df = pd.DataFrame({"a": np.arange(6.0), "b": np.arange(6), "c": np.arange(6, dtype=np.float32) / 2,
                       "d": np.arange(6) % 2 == 0, "e": np.arange(6.0) * 3},
                      index=pd.date_range("2012-03-01", periods=6, freq="1h"))
    path = tmp_path / "mixed.h5"
    df.to_hdf(path, key="df", format="fixed")
    _assert_matches_frame(read_pandas_hdf(path), pd.read_hdf(path, "df"))
    numbered = df[["a", "e"]].set_axis([101, 205], axis=1)
    numbered.to_hdf(tmp_path / "ints.h5", key="df", format="fixed")
    assert read_pandas_hdf(tmp_path / "ints.h5").sensor_ids == ["101", "205"]


def test_pandas_time_range(tmp_path):
    df = _frame(pd)
    df.to_hdf(tmp_path / "f.h5", key="df", format="fixed")
    _assert_matches_frame(read_pandas_hdf(tmp_path / "f.h5", start=100, stop=150), df.iloc[100:150])


@pytest.mark.parametrize("interleaved", [False, True])
def test_pandas_reader_peak_memory_within_115_percent(tmp_path, interleaved):
    steps, nodes = 20000, 50
    columns = [str(i) for i in range(nodes)]
    df = _frame(pd, steps=steps, columns=columns)
    if interleaved:  # two blocks whose columns alternate: the buffered path
        df = df.fillna(0).astype({c: np.int64 for c in columns[1::2]})
    path = tmp_path / "big.h5"
    df.to_hdf(path, key="df", format="fixed")
    read_pandas_hdf(path, stop=10)  # warm up h5py's one-time allocations
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        series = read_pandas_hdf(path)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert series.nbytes == steps * nodes * 4
    assert peak <= 1.15 * series.nbytes, f"peak {peak} bytes for a {series.nbytes}-byte tensor"


def test_pandas_errors_name_the_keys_and_the_format(tmp_path):
    path = tmp_path / "two.h5"
    _frame(pd).to_hdf(path, key="df", format="fixed")
    _frame(pd).to_hdf(path, key="speed", format="fixed")
    with pytest.raises(UserError, match=r"two\.h5.*keys \['/df', '/speed'\]"):
        load_series(path)
    with pytest.raises(UserError, match=r"key 'volume'.*\['/df', '/speed'\]"):
        load_series(path, key="volume")
    _assert_matches_frame(load_series(path, key="speed"), pd.read_hdf(path, "speed"))
    _frame(pd).to_hdf(tmp_path / "table.h5", key="df", format="table")
    with pytest.raises(UserError, match="'table' format, which is not supported"):
        load_series(tmp_path / "table.h5")
    with warnings.catch_warnings():  # pandas warns that it pickles the mixed labels: the case under test
        warnings.simplefilter("ignore")
        pd.DataFrame({("x", 1): [1.0], "y": [2.0]}).to_hdf(tmp_path / "pickled.h5", key="df")
    with pytest.raises(UserError, match="pickled Python objects"):
        load_series(tmp_path / "pickled.h5")


# --- native layout and HDF5 dispatch ----------------------------------------------------------------

def _series(steps: int = 40, nodes: int = 4, features: int = 2) -> Series:
    values = torch.arange(steps * nodes * features, dtype=torch.float32).reshape(steps, nodes, features)
    stamps = np.datetime64("2012-03-01T00:00", "ns") + np.arange(steps) * np.timedelta64(5, "m")
    adjacency = np.eye(nodes, dtype=np.float32) + np.eye(nodes, k=1, dtype=np.float32)
    return Series(values, stamps, [f"s{i}" for i in range(nodes)], adjacency, ["speed", "flow"])


def test_native_round_trip_and_conversion(tmp_path):
    series = _series()
    write_series(tmp_path / "native.h5", series)
    back = load_series(tmp_path / "native.h5")
    assert torch.equal(back.values, series.values)
    np.testing.assert_array_equal(back.timestamps, series.timestamps)
    assert (back.sensor_ids, back.feature_names) == (series.sensor_ids, series.feature_names)
    np.testing.assert_array_equal(back.adjacency, series.adjacency)
    copy = convert_to_native(tmp_path / "native.h5", tmp_path / "copy.hdf5")
    assert torch.equal(read_series(copy).values, series.values)


def test_hdf5_of_neither_layout_lists_its_top_level(tmp_path):
    with h5py.File(tmp_path / "other.h5", "w") as file:
        file.create_dataset("speeds", data=np.zeros((3, 2)))
        file.create_group("meta")
    with pytest.raises(UserError, match=r"other\.h5: expected .* found top level meta \(group\), speeds \(dataset"):
        load_series(tmp_path / "other.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(UserError, match=r"text\.h5: expected an HDF5 file"):
        load_series(tmp_path / "text.h5")


# --- CSV --------------------------------------------------------------------------------------------

def test_los_loop_csv(tmp_path):
    csv_path = shared_file("los-loop/los_speed.csv")
    series = load_series(csv_path, cache_dir=tmp_path)
    assert tuple(series.values.shape) == (2016, 207, 1)
    assert series.sensor_ids == csv_path.read_text().splitlines()[0].split(",")
    assert series.timestamps[0] == np.datetime64("2012-03-01T00:00")
    assert (np.diff(series.timestamps) == np.timedelta64(5, "m")).all()
    expected = np.loadtxt(csv_path, delimiter=",", skiprows=1, dtype=np.float32)
    np.testing.assert_array_equal(series.values[:, :, 0].numpy(), expected)
    assert describe_series(series)["step"] == "5min"
    adjacency = np.loadtxt(shared_file("los-loop/los_adj.csv"), delimiter=",")
    assert describe_graph(adjacency) == {"nodes": 207, "edges": 2833 - int(np.count_nonzero(np.diag(adjacency))),
                                         "edges_with_self_loops": 2833, "symmetric": True}


@pytest.mark.parametrize("corner", ["", "timestamp", "Date"])
def test_csv_with_time_column_and_missing_cells(tmp_path, corner):
    path = tmp_path / "speeds.csv"
    path.write_text(f"{corner},a,b\n2012-03-01 00:00:00,1.5,NA\n\n2012-03-01 01:00:00,,3\n"
                    "2012-03-01T02:00,4,5\n")
    series = read_series(path, start="1999-01-01", freq="1min")  # the file's own times win
    assert series.sensor_ids == ["a", "b"]
    np.testing.assert_array_equal(series.timestamps, np.array(["2012-03-01T00", "2012-03-01T01",
                                                               "2012-03-01T02"], dtype="datetime64[ns]"))
    np.testing.assert_array_equal(series.values[:, :, 0].numpy(),
                                  np.array([[1.5, np.nan], [np.nan, 3], [4, 5]], dtype=np.float32))


@pytest.mark.parametrize("name, text, message", [
    ("gap.csv", "time,a\n2012-03-01T00:00,1\n2012-03-01T00:05,2\n2012-03-01T00:15,3\n",
     r"gap\.csv: expected evenly spaced.*data row 3"),
    ("ragged.csv", "a,b\n1,2\n3\n", r"ragged\.csv: data rows 1-2: expected 2 numbers per row"),
    ("text.csv", "a,b\n1,2\n3,x\n", r"text\.csv: data rows 1-2: expected 2 numbers.*'x'"),
    ("empty.csv", "a,b\n", r"empty\.csv: expected a header row .* found 2 ids and 0 rows"),
])
def test_csv_errors_name_rows(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(UserError, match=message):
        read_series(tmp_path / name)


def test_csv_bad_frequency_is_named(tmp_path):
    (tmp_path / "ok.csv").write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match=r"dataset\.freq \(--freq\): expected .* found '5 parsecs'"):
        read_series(tmp_path / "ok.csv", freq="5 parsecs")


# --- NPY / NPZ --------------------------------------------------------------------------------------

_BASE = np.arange(7 * 5 * 3, dtype=np.float64).reshape(7, 5, 3)  # T x N x F


@pytest.mark.parametrize("order", AXIS_ORDERS)
@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_arrays_in_every_axis_order(tmp_path, order, suffix):
    expected = _BASE if "F" in order else _BASE[:, :, :1]
    array = (_BASE if "F" in order else _BASE[:, :, 0]).transpose(["TNF".index(a) for a in order])
    path = tmp_path / f"node_values{suffix}"
    if suffix == ".npy":
        np.save(path, array)
    else:
        np.savez(path, x=array)
    series = read_series(path, axis_order=order.lower(), start="2020-01-01", freq="1h")
    np.testing.assert_array_equal(series.values.numpy(), expected.astype(np.float32))
    assert series.sensor_ids == ["0", "1", "2", "3", "4"]
    assert series.timestamps[1] - series.timestamps[0] == np.timedelta64(1, "h")
    assert series.timestamps[0] == np.datetime64("2020-01-01")


def test_npz_keys(tmp_path):
    np.savez(tmp_path / "many.npz", data=_BASE[:, :, 0], mask=np.ones((7, 5)), other=np.zeros(3))
    np.testing.assert_array_equal(read_series(tmp_path / "many.npz").values[:, :, 0].numpy(), _BASE[:, :, 0])
    assert read_series(tmp_path / "many.npz", key="mask").values.sum() == 35
    np.savez(tmp_path / "two.npz", a=_BASE[:, :, 0], b=_BASE[:, :, 1])
    with pytest.raises(UserError, match=r"two\.npz: expected an array key among \['a', 'b'\]"):
        read_series(tmp_path / "two.npz")


def test_array_errors(tmp_path):
    np.save(tmp_path / "x.npy", _BASE)
    with pytest.raises(UserError, match=r"axis order: expected one of TN, NT, TNF, NTF, NFT, TFN, found 'TXN'"):
        load_series(tmp_path / "x.npy", axis_order="TXN", cache_dir=tmp_path / "cache")
    with pytest.raises(UserError, match=r"x\.npy: expected a 2-d array for axis order TN, found shape \(7, 5, 3\)"):
        read_series(tmp_path / "x.npy")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(UserError, match=r"objects\.npy: expected a NumPy \.npy file of numbers"):
        read_series(tmp_path / "objects.npy")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


# --- conversion cache -------------------------------------------------------------------------------

def test_conversion_cache_converts_once_and_again_on_change(tmp_path, monkeypatch):
    calls = []
    real = load_module.convert_to_native
    monkeypatch.setattr(load_module, "convert_to_native", lambda *a, **kw: calls.append(a) or real(*a, **kw))
    source, cache = tmp_path / "speeds.csv", tmp_path / "cache"
    source.write_text("a,b\n1,2\n3,4\n")
    first = load_series(source, cache_dir=cache)
    second = load_series(source, cache_dir=cache)
    assert len(calls) == 1 and torch.equal(first.values, second.values)
    (entry,) = cache.iterdir()
    with h5py.File(entry, "r") as file:
        assert file.attrs["layout"] == "stgnn-launch-series"

    source.write_text("a,b\n1,2\n3,4\n5,6\n")
    os.utime(source, ns=(source.stat().st_atime_ns, source.stat().st_mtime_ns + 10**9))
    changed = load_series(source, cache_dir=cache)
    assert len(calls) == 2 and changed.num_steps == 3
    assert [p.name for p in cache.iterdir()] != [entry.name] and len(list(cache.iterdir())) == 1  # stale one gone

    hourly = load_series(source, cache_dir=cache, freq="1h")
    assert len(calls) == 3 and hourly.step == np.timedelta64(1, "h")
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]


def test_failed_conversion_leaves_nothing(tmp_path):
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n3,oops\n")
    with pytest.raises(UserError, match="oops"):
        load_series(tmp_path / "bad.csv", cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


# --- file-level errors ------------------------------------------------------------------------------

def test_missing_file_and_unknown_suffix_name_path_and_suffixes(tmp_path):
    accepted = r"\.h5, \.hdf5, \.csv, \.npy, \.npz"
    with pytest.raises(UserError, match=rf"missing\.h5: expected an existing file \({accepted}\)"):
        load_series(tmp_path / "missing.h5")
    (tmp_path / "speeds.parquet").write_bytes(b"PAR1")
    with pytest.raises(UserError, match=rf"speeds\.parquet: expected a name ending in one of {accepted}, "
                                        r"found suffix '\.parquet'"):
        load_series(tmp_path / "speeds.parquet")
    (tmp_path / "ok.csv").write_text("a\n1\n")
    with pytest.raises(UserError, match=r"output .*out\.csv: expected a name ending in \.h5 or \.hdf5"):
        convert_to_native(tmp_path / "ok.csv", tmp_path / "out.csv")
