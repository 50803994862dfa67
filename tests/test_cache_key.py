"""The conversion cache is keyed on the file's content (issue 22, point 8): an edit that keeps the size and the
modification time is re-read, and the start-up block says which cache entry a run used."""

import os

import numpy as np

from helpers import compose_config
from stgnn_launch.data.readers import CACHE_USED, load_series
from stgnn_launch.train.run import run_training


def write_csv(path, values):
    with path.open("w") as handle:
        handle.write("a,b,c\n")
        for row in values:
            handle.write(",".join(f"{v:.1f}" for v in row) + "\n")


def test_an_edit_that_keeps_size_and_mtime_is_reread(tmp_path):
    csv, cache = tmp_path / "speeds.csv", tmp_path / "cache"
    values = np.full((50, 3), 41.0)
    write_csv(csv, values)
    stat = csv.stat()
    assert float(load_series(csv, cache_dir=cache).values[7, 1, 0]) == 41.0
    assert CACHE_USED[str(csv.resolve())][1] == "converted now"
    values[7, 1] = 42.0  # same length in text: the same size
    write_csv(csv, values)
    os.utime(csv, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the same modification time
    assert csv.stat().st_size == stat.st_size and csv.stat().st_mtime_ns == stat.st_mtime_ns
    assert float(load_series(csv, cache_dir=cache).values[7, 1, 0]) == 42.0
    CACHE_USED.clear()  # as in the next process
    assert float(load_series(csv, cache_dir=cache).values[7, 1, 0]) == 42.0
    assert CACHE_USED[str(csv.resolve())][1] == "reused"
    assert len(list(cache.glob("speeds-*.h5"))) == 1  # one entry per source file


def test_the_startup_block_names_the_cache_entry(tmp_path, capsys):
    rng = np.random.default_rng(0)
    csv = tmp_path / "speeds.csv"
    write_csv(csv, 55 + rng.normal(0, 2, (400, 3)))
    adjacency = tmp_path / "adj.npy"
    np.save(adjacency, np.eye(3, dtype=np.float32))
    cfg = compose_config("dataset=custom", f"dataset.path={csv}", f"dataset.adj_path={adjacency}",
                         f"dataset.cache_dir={tmp_path / 'cache'}", "model=persistence", "trainer.progress=false")
    cfg.run_dir = str(tmp_path / "run")
    run_training(cfg, tmp_path / "run")
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.strip().startswith("cache:"))
    assert str(tmp_path / "cache") in line and "converted now" in line
