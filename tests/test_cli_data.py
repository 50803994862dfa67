"""stgnn-data: convert, inspect, graph, generate, and how it reports bad input."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import shared_file
from stgnn_launch.cli.data import main
from stgnn_launch.data.graph import load_graph
from stgnn_launch.data.readers.hdf5_native import read_native, write_series
from stgnn_launch.data.series import Series


@pytest.fixture
def speeds_csv(tmp_path):
    path = tmp_path / "speeds.csv"
    path.write_text("773869,767541,767542\n60,0,55.5\n61,62,\n0,63,57\n64,65,58\n")
    return path


def test_convert_then_inspect(tmp_path, speeds_csv, capsys):
    out = tmp_path / "speeds.h5"
    assert main(["convert", str(speeds_csv), "--out", str(out), "--start", "2020-05-01T06:00", "--freq", "15min"]) == 0
    assert f"wrote {out}: 4 steps x 3 sensors x 1 features" in capsys.readouterr().out
    series = read_native(out)
    assert series.sensor_ids == ["773869", "767541", "767542"]
    assert series.timestamps[0] == np.datetime64("2020-05-01T06:00")
    assert torch.isnan(series.values[1, 2, 0])

    assert main(["inspect", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "shape:          4 x 3 x 1" in printed
    assert "start:          2020-05-01T06:00:00" in printed and "end:            2020-05-01T06:45:00" in printed
    assert "step:           15min" in printed
    assert "missing share:  0.2500 (25.00%)" in printed  # two zeros and one empty cell of 12


def test_inspect_array_with_axis_order(tmp_path, capsys):
    np.save(tmp_path / "node_values.npy", np.ones((3, 2, 10)))  # N x F x T
    assert main(["inspect", str(tmp_path / "node_values.npy"), "--axis-order", "nft"]) == 0
    assert "shape:          10 x 3 x 2" in capsys.readouterr().out


def test_inspect_series_with_stored_graph(tmp_path, capsys):
    adjacency = np.array([[1, 0.5], [0.5, 1]], dtype=np.float32)
    series = Series(torch.ones(4, 2, 1), np.arange(4).astype("datetime64[h]"), ["a", "b"], adjacency)
    write_series(tmp_path / "with_graph.h5", series)
    assert main(["inspect", str(tmp_path / "with_graph.h5")]) == 0
    printed = capsys.readouterr().out
    assert "step:           1h" in printed and "edges:                  2" in printed
    assert "symmetric:              True" in printed


def test_inspect_graphs(tmp_path, capsys):
    pickle_path = shared_file("metr-la/adj_mx.pkl")
    assert main(["inspect", str(pickle_path)]) == 0
    printed = capsys.readouterr().out
    assert "nodes:                  207" in printed
    assert "edges with self loops:  1722" in printed and "edges:                  1515" in printed
    assert "symmetric:              False" in printed

    np.save(tmp_path / "adj.npy", np.array([[0, 1, 0], [1, 0, 2], [0, 2, 0]], dtype=np.float32))
    assert main(["inspect", "--graph", str(tmp_path / "adj.npy")]) == 0
    printed = capsys.readouterr().out
    assert "nodes:                  3" in printed and "edges:                  4" in printed
    assert "symmetric:              True" in printed


def test_graph_from_distances(tmp_path, capsys):
    distances = shared_file("pems-bay/distances_bay_2017.csv")
    reference = shared_file("pems-bay/adj_mx_bay.pkl")
    out = tmp_path / "bay.pkl"
    assert main(["graph", "--distances", str(distances), "--sensor-ids", str(reference), "--out", str(out)]) == 0
    assert "edges with self loops:  2694" in capsys.readouterr().out
    built, ids = load_graph(out)
    expected, expected_ids = load_graph(reference)
    assert ids == expected_ids
    np.testing.assert_allclose(built, expected, atol=2e-7)


def test_generate(tmp_path, capsys):
    out = tmp_path / "synthetic.h5"
    assert main(["generate", "--nodes", "6", "--steps", "50", "--seed", "3", "--out", str(out), "--freq", "1min"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    series = read_native(out)
    assert tuple(series.values.shape) == (50, 6, 1) and series.step == np.timedelta64(1, "m")
    assert series.adjacency is not None


def test_errors_exit_2_with_one_line_and_leave_no_output(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n3,broken\n")
    out = tmp_path / "out" / "bad.h5"
    assert main(["convert", str(bad), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("stgnn-data: error: ") and "bad.csv: data rows 1-2" in captured.err
    assert "Traceback" not in captured.err and captured.err.count("\n") == 1
    assert not out.exists() and list(out.parent.iterdir()) == []  # no temp file left either

    assert main(["inspect", str(tmp_path / "nowhere.h5")]) == 2
    assert "nowhere.h5: expected an existing file" in capsys.readouterr().err


def test_console_script_subprocess(tmp_path, speeds_csv):
    out = tmp_path / "speeds.h5"
    command = [sys.executable, "-m", "stgnn_launch.cli.data"]
    ok = subprocess.run(command + ["convert", str(speeds_csv), "--out", str(out)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert out.is_file()
    failed = subprocess.run(command + ["inspect", str(tmp_path / "speeds.txt")], capture_output=True, text=True)
    assert failed.returncode == 2
    assert failed.stderr.strip() == (f"stgnn-data: error: series file {tmp_path / 'speeds.txt'}: expected a name "
                                     f"ending in one of .h5, .hdf5, .csv, .npy, .npz, found suffix '.txt'")
