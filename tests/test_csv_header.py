"""A CSV header names each sensor once (issue 22, point 9): a trailing comma on every row or a repeated id is
refused in one line naming the column, not reported later as a graph of the wrong size."""

import subprocess
import sys

import numpy as np
import pytest

from stgnn_launch.data.readers import read_series as read_csv
from stgnn_launch.errors import UserError


def write(path, header, rows, trailing=""):
    path.write_text(",".join(header) + trailing + "\n" + "".join(",".join(f"{v:.1f}" for v in row) + trailing + "\n"
                                                                 for row in rows))
    return path


def test_a_trailing_comma_on_every_row_is_named(tmp_path):
    path = write(tmp_path / "trailing.csv", [f"s{i}" for i in range(8)], np.full((30, 8), 50.0), trailing=",")
    with pytest.raises(UserError, match=r"trailing\.csv: expected a sensor id in every header column, found an "
                                        r"empty one in column 9 \(a trailing comma on each row\?\)"):
        read_csv(path)
    proc = subprocess.run([sys.executable, "-m", "stgnn_launch.cli.data", "inspect", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "column 9" in proc.stderr


def test_a_repeated_sensor_id_is_refused(tmp_path):
    path = write(tmp_path / "twice.csv", ["a", "b", "a"], np.full((30, 3), 50.0))
    with pytest.raises(UserError, match=r"expected distinct sensor ids in the header, found 'a' in columns 1 and 3"):
        read_csv(path)
    timed = tmp_path / "timed.csv"
    timed.write_text("time,a,b,b\n" + "".join(f"2012-03-01T00:{5 * i:02d},1,2,3\n" for i in range(5)))
    with pytest.raises(UserError, match=r"found 'b' in columns 3 and 4"):
        read_csv(timed)
