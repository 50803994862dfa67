"""PyTorch Geometric Temporal's JSON layouts: the real chickenpox and Montevideo bus files, small files in
the same layouts, and the errors for files that are not these layouts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers import shared_file
from stgnn_launch.config.schema import DatasetConfig
from stgnn_launch.data.datasets import dataset_num_steps, load_dataset
from stgnn_launch.data.readers.pgt_json import read_chickenpox, read_montevideo_bus, read_pgt_json
from stgnn_launch.errors import UserError


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


def small_chickenpox(tmp_path: Path) -> Path:
    fx = [[float(t * 10 + n) - 20 for n in range(3)] for t in range(6)]  # negatives included
    edges = [[0, 1], [1, 0], [1, 2], [2, 1], [0, 0], [1, 1], [2, 2]]
    return write_json(tmp_path / "pox.json", {"edges": edges, "node_ids": {"A": 0, "C": 2, "B": 1}, "FX": fx})


def small_bus(tmp_path: Path) -> Path:
    nodes = [{"bus_stop": sid, "id": sid, "lon": 0, "lat": 0, "in_degree": 1,
              "y": [0, 0, sid % 7, 3, 0], "X": {"y": [0, 0, sid % 7, 3, 0]}} for sid in (11, 12, 13)]
    links = [{"source": 11, "target": 12, "weight": 100.0}, {"source": 12, "target": 13, "weight": 300.0},
             {"source": 13, "target": 11, "weight": 200.0}]
    return write_json(tmp_path / "bus.json", {"directed": True, "multigraph": False, "graph": {},
                                              "nodes": nodes, "links": links})


def test_small_chickenpox_layout(tmp_path):
    series = read_pgt_json(small_chickenpox(tmp_path))
    assert tuple(series.values.shape) == (6, 3, 1)
    assert series.sensor_ids == ["A", "B", "C"]  # ordered by the published index, not by the dict's order
    assert series.values[1, 2, 0].item() == 10 + 2 - 20
    assert series.values.min().item() == -20  # negatives kept: they are real z-scores
    assert series.timestamps[0] == np.datetime64("2005-01-03T00:00")
    assert (np.diff(series.timestamps) == np.timedelta64(7, "D")).all()
    expected = np.array([[1, 1, 0], [1, 1, 1], [0, 1, 1]], dtype=np.float32)
    np.testing.assert_array_equal(series.adjacency, expected)


def test_small_bus_layout(tmp_path):
    series = read_montevideo_bus(small_bus(tmp_path))
    assert tuple(series.values.shape) == (5, 3, 1)
    assert series.sensor_ids == ["11", "12", "13"]
    np.testing.assert_array_equal(series.values[:, 1, 0].numpy(), [0, 0, 5, 3, 0])  # zeros are kept as zeros
    assert series.timestamps[0] == np.datetime64("2020-10-01T00:00")
    assert (np.diff(series.timestamps) == np.timedelta64(1, "h")).all()
    sigma = np.std([100.0, 300.0, 200.0])
    adjacency = series.adjacency
    assert adjacency[0, 1] == pytest.approx(np.exp(-(100 / sigma) ** 2), rel=1e-5)  # row = source
    assert adjacency[1, 2] == pytest.approx(np.exp(-(300 / sigma) ** 2), rel=1e-5)
    assert adjacency[1, 0] == 0 and adjacency[0, 0] == 0  # directed, no invented links
    assert np.count_nonzero(adjacency) == 3


def test_layout_detection_through_the_dataset_config(tmp_path):
    cfg = DatasetConfig(name="bus", path=str(small_bus(tmp_path)))
    assert dataset_num_steps(cfg) == 5
    part = load_dataset(cfg, time_range=(1, 4))
    assert tuple(part.values.shape) == (3, 3, 1)
    assert part.timestamps[0] == np.datetime64("2020-10-01T01:00")
    assert part.adjacency.shape == (3, 3)


@pytest.mark.parametrize("data, message", [
    ({"edges": [[0, 1]], "node_ids": {"A": 0, "B": 1}, "FX": [[1.0, 2.0, 3.0]]}, "FX with 2 per row"),
    ({"edges": [[0, 5]], "node_ids": {"A": 0, "B": 1}, "FX": [[1.0, 2.0]]}, "integer node indices in 0..1"),
    ({"edges": [], "node_ids": {"A": 0, "B": 3}, "FX": [[1.0, 2.0]]}, "distinct index 0..N-1"),
    ({"nodes": [{"id": 1, "y": [1, 2]}, {"id": 2}], "links": []}, 'nodes as objects with "id" and "y"'),
    ({"nodes": [{"id": 1, "y": [1, 2]}, {"id": 2, "y": [1]}], "links": []}, "equally long rows"),
    ({"nodes": [{"id": 1, "y": [1]}, {"id": 2, "y": [1]}], "links": [{"source": 1, "target": 9, "weight": 5}]},
     "link 0 to join two listed node ids"),
    ({"series": [1, 2, 3]}, "expected a PyTorch Geometric Temporal chickenpox JSON"),
    ([1, 2, 3], "found a JSON list"),
])
def test_bad_layouts_name_the_file_and_the_problem(tmp_path, data, message):
    path = write_json(tmp_path / "bad.json", data)
    with pytest.raises(UserError, match="bad.json") as info:
        read_pgt_json(path)
    assert message in str(info.value)


def test_reader_for_the_other_layout_refuses(tmp_path):
    with pytest.raises(UserError, match="expected a PyTorch Geometric Temporal chickenpox JSON"):
        read_chickenpox(small_bus(tmp_path))
    with pytest.raises(UserError, match="expected a networkx node-link JSON"):
        read_montevideo_bus(small_chickenpox(tmp_path))
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(UserError, match="broken.json: expected JSON"):
        read_pgt_json(tmp_path / "broken.json")


def test_real_chickenpox():
    series = read_chickenpox(shared_file("chickenpox/chickenpox.json"))
    assert tuple(series.values.shape) == (521, 20, 1)
    assert series.sensor_ids[0] == "BACS" and "BUDAPEST" in series.sensor_ids
    assert series.timestamps[-1] == np.datetime64("2005-01-03") + np.timedelta64(7 * 520, "D")
    assert series.values.min().item() < -8 and series.values.max().item() > 8  # z-scores, both signs
    adjacency = series.adjacency
    assert np.count_nonzero(adjacency) == 102 and np.trace(adjacency) == 20
    np.testing.assert_array_equal(adjacency, adjacency.T)
    assert set(np.unique(adjacency)) == {0.0, 1.0}


def test_real_montevideo_bus():
    series = read_montevideo_bus(shared_file("montevideo-bus/montevideo_bus.json"))
    assert tuple(series.values.shape) == (744, 675, 1)
    assert series.timestamps[-1] == np.datetime64("2020-10-31T23:00")
    values = series.values.numpy()
    assert values.min() == 0 and values.max() == 101 and np.all(values == np.round(values))
    assert 0.79 < (values == 0).mean() < 0.81  # the zeros are readings, kept as they are
    adjacency = series.adjacency
    # 690 directed links; the longest ones (up to 1,991 m, sigma 174 m) underflow float32 to 0
    assert 650 < np.count_nonzero(adjacency) <= 690
    assert np.trace(adjacency) == 0 and adjacency.max() <= 1
    assert not np.array_equal(adjacency, adjacency.T)


@pytest.mark.parametrize("preset, window, horizon", [("chickenpox", 4, 1), ("montevideo_bus", 24, 12)])
def test_presets_read_the_real_files_with_nothing_missing(preset, window, horizon):
    from helpers import compose_config

    cfg = compose_config(f"experiment={preset}")
    assert cfg.dataset.name == preset and cfg.dataset.null_value is None  # a 0 is a real reading here
    assert (cfg.batching.window, cfg.batching.horizon) == (window, horizon)
    assert cfg.metrics.mape_threshold == 0.5
    shared_file(cfg.dataset.path.removeprefix("../shared/data/"))
    series = load_dataset(cfg.dataset)
    assert series.adjacency is not None and series.num_nodes == {"chickenpox": 20, "montevideo_bus": 675}[preset]


def test_persistence_trains_on_a_weekly_series_without_time_of_day(tmp_path):
    """model=persistence is fitted like every baseline; a weekly series has no time-of-day slots to give it."""
    import subprocess
    import sys

    fx = [[float(np.sin(t / 3 + n)) for n in range(3)] for t in range(80)]
    edges = [[0, 1], [1, 0], [1, 2], [2, 1]]
    path = write_json(tmp_path / "pox.json", {"edges": edges, "node_ids": {"A": 0, "B": 1, "C": 2}, "FX": fx})
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "stgnn_launch.cli.train", "dataset=chickenpox", f"dataset.path={path}",
                           "model=persistence", "trainer.progress=false", f"hydra.run.dir={run_dir}"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    record = json.loads((run_dir / "results.json").read_text())
    assert np.isfinite(record["test"]["avg"]["mae"]) and record["model"] == "persistence"
