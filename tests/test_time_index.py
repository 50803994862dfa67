"""Every reader refuses an irregular time index (issue 22, point 5), as the CSV reader does: the pandas HDF5
reader (METR-LA layout) included, and `stgnn-data inspect` says so instead of a wrong end time."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from stgnn_launch.data.readers.hdf5_pandas import read_pandas_hdf
from stgnn_launch.data.series import Series
from stgnn_launch.errors import UserError

REGULAR = pd.date_range("2012-03-01", periods=8, freq="5min")
BAD_INDEXES = {
    "duplicated": REGULAR[:4].append(REGULAR[3:7]),
    "decreasing": REGULAR[[0, 1, 2, 4, 3, 5, 6, 7]],
    "irregular": REGULAR[:4].append(REGULAR[5:8] + pd.Timedelta("1min")).append(REGULAR[-1:] + pd.Timedelta("1h")),
}


def metr_la_like(path, index):
    frame = pd.DataFrame(np.arange(len(index) * 3, dtype=np.float64).reshape(-1, 3) + 40, index=index,
                         columns=["773869", "767541", "767542"])
    frame.to_hdf(path, key="df", format="fixed")
    return path


@pytest.mark.parametrize("name", sorted(BAD_INDEXES))
def test_the_pandas_reader_refuses_an_irregular_index(tmp_path, name):
    path = metr_la_like(tmp_path / f"{name}.h5", BAD_INDEXES[name])
    with pytest.raises(UserError, match=r"key /?df: expected evenly spaced, increasing timestamps, found .* at step"):
        read_pandas_hdf(path)
    inspect = subprocess.run([sys.executable, "-m", "stgnn_launch.cli.data", "inspect", str(path)],
                             capture_output=True, text=True, timeout=120)
    assert inspect.returncode == 2 and len(inspect.stderr.strip().splitlines()) == 1, inspect.stderr
    assert "expected evenly spaced" in inspect.stderr and "end" not in inspect.stdout


def test_a_regular_index_still_reads():
    assert Series(torch.zeros(8, 3, 1), REGULAR.values, ["a", "b", "c"]).num_steps == 8


def test_any_series_refuses_an_irregular_index():
    with pytest.raises(UserError, match="series timestamps: expected evenly spaced"):
        Series(torch.zeros(8, 3, 1), BAD_INDEXES["duplicated"].values, ["a", "b", "c"])
