"""Bad input, tried as a new user would: the real `stgnn-train` in a subprocess, one case per mistake.

Every refusal must be one line `stgnn-train: error: <key or file>: expected ..., found ...` on stderr, a
non-zero exit, no traceback (HYDRA_FULL_ERROR unset), and no run directory left among the real runs:
either removed, or marked with failed.json (which stgnn-report shows as failed) and without results.json.
Readings that are legal but suspicious (NaN/inf, negative, constant or never-observed sensors) train,
with one warning each that counts or names them.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from helpers import TINY_DATA

REMOVED, FAILED = "removed", "failed"
FAST = ("trainer.max_epochs=1", "trainer.progress=false")


def user_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return {**env, **extra}


def train(run_dir: Path, *overrides: str, env: dict[str, str] | None = None, cwd: Path | None = None,
          timeout: float = 240) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "stgnn_launch.cli.train", *FAST, f"hydra.run.dir={run_dir}", *overrides]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env or user_env(),
                          cwd=cwd or run_dir.parent)


def assert_refused(proc: subprocess.CompletedProcess, message: str, run_dir: Path, left: str) -> None:
    """One error line matching `message`, exit status 2, no traceback, and the run directory `left`."""
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    errors = [line for line in proc.stderr.splitlines() if line.startswith("stgnn-train: error: ")]
    assert len(errors) == 1, out
    assert re.search(message, errors[0]), errors[0]
    assert "Traceback" not in out, out
    if left == REMOVED or not run_dir.exists():  # refused before the run started (the planner reads the
        assert not run_dir.exists(), sorted(p.name for p in run_dir.iterdir())  # file's shape first): gone
    else:
        assert (run_dir / "failed.json").is_file() and not (run_dir / "results.json").exists()
        failure = json.loads((run_dir / "failed.json").read_text())
        assert re.search(message, failure["error"]), failure


def write_csv(path: Path, values: np.ndarray) -> Path:
    """Readings T x N under a header of sensor ids s0..s{N-1}; no timestamp column (dataset.start/freq)."""
    header = ",".join(f"s{i}" for i in range(values.shape[1]))
    rows = "\n".join(",".join(repr(float(v)) for v in row) for row in values)
    path.write_text(f"{header}\n{rows}\n")
    return path


def speeds(steps: int = 700, nodes: int = 6, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(steps)[:, None]
    return 55 + 10 * np.sin(2 * np.pi * t / 288) + rng.normal(0, 2, (steps, nodes))


def ring(path: Path, nodes: int) -> Path:
    adjacency = np.eye(nodes, dtype=np.float32) + 0.5 * np.roll(np.eye(nodes, dtype=np.float32), 1, axis=1)
    np.save(path, adjacency)
    return path


def custom(series: Path, adjacency: Path, *more: str) -> tuple[str, ...]:
    return ("dataset=custom", f"dataset.path={series}", f"dataset.adj_path={adjacency}", "model=persistence",
            "batching.batch_size=16", *more)


@pytest.fixture
def csv_data(tmp_path):
    return write_csv(tmp_path / "speeds.csv", speeds()), ring(tmp_path / "adj.npy", 6)


# ---- refusals that were already clear: still one line, nothing left behind ------------------------------


def test_truncated_hdf5(tmp_path, csv_data):
    _, adj = csv_data
    whole = tmp_path / "whole.h5"
    with h5py.File(whole, "w") as f:
        f.create_dataset("values", data=np.zeros((700, 6, 1), np.float32))
    (tmp_path / "cut.h5").write_bytes(whole.read_bytes()[:2048])
    proc = train(tmp_path / "run", *custom(tmp_path / "cut.h5", adj))
    assert_refused(proc, r"cut\.h5: expected an HDF5 file, found a file HDF5 cannot open", tmp_path / "run", FAILED)


def test_wrong_pandas_key(tmp_path, csv_data):
    pd = pytest.importorskip("pandas")
    _, adj = csv_data
    frame = pd.DataFrame(speeds(), columns=[f"s{i}" for i in range(6)],
                         index=pd.date_range("2012-03-01", periods=700, freq="5min"))
    frame.to_hdf(tmp_path / "speed.h5", key="speed", format="fixed")
    proc = train(tmp_path / "run", *custom(tmp_path / "speed.h5", adj, "dataset.key=volume"))
    assert_refused(proc, r"speed\.h5: expected key 'volume' to be one of \['/speed'\]", tmp_path / "run", FAILED)


def test_non_numeric_csv(tmp_path, csv_data):
    _, adj = csv_data
    (tmp_path / "words.csv").write_text("s0,s1,s2,s3,s4,s5\n1,2,3,4,5,6\n1,2,fast,4,5,6\n")
    proc = train(tmp_path / "run", *custom(tmp_path / "words.csv", adj))
    assert_refused(proc, r"words\.csv: .*expected 6 numbers per row", tmp_path / "run", FAILED)


def test_adjacency_of_the_wrong_size(tmp_path, csv_data):
    series, _ = csv_data
    proc = train(tmp_path / "run", *custom(series, ring(tmp_path / "adj5.npy", 5)))
    assert_refused(proc, r"graph .*adj5\.npy: expected 6 rows \(one per sensor\), found 5$", tmp_path / "run", FAILED)


def test_no_ranks(tmp_path):
    proc = train(tmp_path / "run", *TINY_DATA, "gpus=0")
    assert_refused(proc, r"^stgnn-train: error: gpus: expected a positive number of ranks, found 0$",
                   tmp_path / "run", REMOVED)


def test_slurm_without_slurm(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()  # no srun, sbatch or sinfo on PATH
    proc = train(tmp_path / "run", *TINY_DATA, "launcher=slurm", "launcher.cpu=true", "gpus=1",
                 "launcher.gpus_per_node=1", env=user_env(PATH=str(empty)))
    assert_refused(proc, r"launcher=slurm: expected a Slurm cluster \(srun on PATH\), found none",
                   tmp_path / "run", REMOVED)


# ---- the items of issue 13 ------------------------------------------------------------------------------


def test_suspicious_readings_train_with_one_warning_each(tmp_path):
    """NaN and inf become missing readings (counted); a negative reading, a stuck sensor and a sensor never
    observed in the training range each get a warning; the run finishes with strict JSON results."""
    values = speeds()
    values[5, 0], values[9, 1], values[11, 2] = math.inf, -math.inf, math.nan  # 3 non-finite readings
    values[20, 3], values[400, 3] = -4.5, -1.0  # 2 negative readings
    values[:, 4] = 61.0  # stuck
    values[:600, 5] = 0.0  # no reading before step 600: outside the training range (< 490)
    run_dir = tmp_path / "run"
    proc = train(run_dir, *custom(write_csv(tmp_path / "odd.csv", values), ring(tmp_path / "adj.npy", 6)))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Traceback" not in out
    assert re.search(r"warning: dataset custom: 3 readings were NaN or infinite; they are treated as missing", out)
    assert re.search(r"warning: dataset custom: 2 readings are negative \(lowest -4\.5\)", out), out
    assert re.search(r"warning: dataset custom: 1 sensors report one constant value .*\(s4\)", out), out
    assert re.search(r"warning: dataset custom: 1 sensors are never observed .*\(s5\): they are masked", out), out
    text = (run_dir / "results.json").read_text()
    record = json.loads(text, parse_constant=lambda name: pytest.fail(f"results.json holds {name}"))
    assert record["dataset"]["filled_readings"] == 3 and len(record["dataset"]["warnings"]) == 3
    for key in ("setup_time_s", "wall_time_s"):
        assert isinstance(record[key], float) and record[key] > 0, (key, record[key])
    assert all(isinstance(e["epoch_time_s"], float) for e in record["epochs"]), record["epochs"]
    assert math.isfinite(record["test"]["avg"]["mae"])
    assert not (run_dir / "failed.json").exists()


def test_wrong_key_on_a_native_file(tmp_path):
    from helpers import random_series
    from stgnn_launch.data.readers.hdf5_native import write_series

    series = random_series(steps=700, nodes=6)
    write_series(tmp_path / "native.h5", series)
    proc = train(tmp_path / "run", *custom(tmp_path / "native.h5", ring(tmp_path / "adj.npy", 6), "dataset.key=df"))
    assert_refused(proc, r"dataset\.key \(--key\): expected null for .*native\.h5, a file in the stgnn-launch "
                         r"layout .*found 'df'", tmp_path / "run", FAILED)


def test_run_dir_that_cannot_be_created(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    run_dir = tmp_path / "file" / "run"
    proc = train(run_dir, *TINY_DATA, "model=persistence", cwd=tmp_path)
    assert_refused(proc, r"^stgnn-train: error: hydra\.run\.dir: expected a directory that can be created and "
                         r"written, found .*file/run \(Not a directory\)$", run_dir, REMOVED)


@pytest.mark.parametrize("ranks", [[], ["gpus=2", "batching=dist_index"]], ids=["1 rank", "2 ranks"])
def test_ctrl_c_is_one_line_and_marks_the_run_failed(tmp_path, ranks):
    # With 2 ranks stgnn-train has exec'd torchrun (stgnn_launch.launch.agent): the signal reaches it alone,
    # it forwards SIGINT to the ranks (rank 0 writes failed.json, each rank prints one line) and ends in one line.
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "stgnn_launch.cli.train", *TINY_DATA, "trainer.max_epochs=200",
           "trainer.patience=1000", *ranks, f"hydra.run.dir={run_dir}"]
    # SIGINT as a terminal delivers it: a suite started in the background (`pytest &`) ignores SIGINT, and
    # a child would inherit that
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=user_env(),
                            cwd=tmp_path, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        started = False
        for line in proc.stdout:  # the startup block ends with the run directory: training begins
            if line.strip().startswith("run dir"):
                started = True
                break
        assert started, proc.stderr.read()
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out + err
    last = "stgnn-train: interrupted (SIGINT)" if ranks else "stgnn-train: interrupted"
    assert err.strip().splitlines()[-1] == last and "Traceback" not in out + err, err
    failure = json.loads((run_dir / "failed.json").read_text())
    assert failure["type"] == "KeyboardInterrupt" and not (run_dir / "results.json").exists()
    report = subprocess.run([sys.executable, "-m", "stgnn_launch.cli.report", str(tmp_path), "--out",
                             str(tmp_path / "report")], capture_output=True, text=True, timeout=120)
    assert report.returncode == 0 and "1 runs (1 failed)" in report.stdout, report.stdout + report.stderr


def test_series_too_short_for_its_windows(tmp_path, csv_data):
    _, adj = csv_data
    series = write_csv(tmp_path / "short.csv", speeds(steps=20))
    proc = train(tmp_path / "run", *custom(series, adj))
    assert_refused(proc, r"expected at least batching\.window \+ batching\.horizon = 24 steps, found 20",
                   tmp_path / "run", FAILED)


@pytest.mark.parametrize("override, message", [
    ("dataset.freq=5parsecs", r"dataset\.freq \(--freq\): expected a count and unit like '5min'.*found '5parsecs'"),
    ("dataset.start=yesterday", r"dataset\.start \(--start\): expected an ISO date .*found 'yesterday'"),
])
def test_time_axis_keys_are_named(tmp_path, csv_data, override, message):
    series, adj = csv_data
    proc = train(tmp_path / "run", *custom(series, adj, override))
    assert_refused(proc, message, tmp_path / "run", FAILED)


@pytest.mark.parametrize("model, override, message", [
    ("tgcn", "model.params.hiden=8",
     r"^stgnn-train: error: model\.params\.hiden: expected one of the hyperparameters of model=tgcn \(hidden\), "
     r"found an unknown key$"),
    ("tgcn", "model.params.hidden=eight", r"model\.params\.hidden: expected int \(model=tgcn\), found 'eight'$"),
    ("gwnet", "model.params.dropout=true", r"model\.params\.dropout: expected float \(model=gwnet\), found True$"),
    ("dcrnn", "model.params.rnn_units=6.5", r"model\.params\.rnn_units: expected int \(model=dcrnn\), found 6\.5$"),
])
def test_model_params_checked_before_any_data_is_read(tmp_path, model, override, message):
    missing = tmp_path / "nowhere.h5"  # never opened: the hyperparameters are refused first
    proc = train(tmp_path / "run", "dataset=custom", f"dataset.path={missing}", f"dataset.adj_path={missing}",
                 f"model={model}", override)
    assert_refused(proc, message, tmp_path / "run", REMOVED)


def test_slurm_gpus_on_a_cluster_without_gpus(tmp_path):
    """sbatch's raw 'Invalid generic resource (gres) specification' becomes the key to set."""
    fake = tmp_path / "bin"
    fake.mkdir()
    sinfo = fake / "sinfo"
    sinfo.write_text("#!/bin/sh\necho 'debug* (null)'\necho 'gpu gpu:4'\n")  # the default partition has none
    sinfo.chmod(0o755)
    proc = train(tmp_path / "run", *TINY_DATA, "launcher=slurm", "gpus=1", "launcher.gpus_per_node=1",
                 env=user_env(PATH=str(fake)))  # no sbatch: nothing can be submitted
    assert_refused(proc, r"launcher\.cpu: expected true on the default partition, whose nodes have no GPUs "
                         r"\(sinfo gres: \(null\)\), found None: set launcher\.cpu=true", tmp_path / "run", REMOVED)
