"""Temporary files of a killed or failed write are removed by the next writer (issue 22, point 9): a killed
conversion's or synthetic generation's `.tmp` in the cache, never another live process's."""

import subprocess
import sys

import numpy as np

from stgnn_launch.atomic_write import temp_path_beside
from stgnn_launch.data.readers import load_series


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_killed_writes_temporary_file_is_removed_by_the_next_conversion(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir(parents=True)
    mine = temp_path_beside(cache / "other.h5")  # this (live) process's name pattern
    dead = mine.with_name(mine.name.replace(mine.name.split(".")[-2], str(dead_pid())))
    dead.write_bytes(b"\0" * 4096)  # a killed write's leftover
    mine.write_bytes(b"")  # a live writer's file: kept
    csv = tmp_path / "speeds.csv"
    csv.write_text("a,b\n" + "".join(f"{50 + i % 3}.0,{40 + i % 5}.0\n" for i in range(40)))
    series = load_series(csv, cache_dir=cache)
    assert np.isclose(float(series.values[1, 0, 0]), 51.0)
    assert not dead.exists() and mine.exists()
    assert len(list(cache.glob("speeds-*.h5"))) == 1
