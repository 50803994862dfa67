"""stgnn-report on hand-written run directories: rows, seeds' mean ± std, speedup, unfinished runs, plots."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import read_csv
from stgnn_launch.cli.report import main as report_main
from stgnn_launch.report import build_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOTS = ("speedup.png", "efficiency.png", "memory.png", "time_split.png", "test_mae.png")


def config(batching: str, gpus: int, seed: int, lr: float = 0.001) -> dict:
    return {"dataset": {"name": "synthetic", "num_nodes": 40}, "model": {"name": "dcrnn_pgti", "params": {"K": 3}},
            "batching": {"mode": batching, "batch_size": 64}, "trainer": {"seed": seed, "lr": lr},
            "gpus": gpus, "run_dir": "ignored"}


def metrics(mae: float) -> dict:
    return {h: {"mae": mae, "rmse": mae + 1.0, "mape": mae / 100, "count": 100} for h in ("3", "6", "12", "avg")}


def write_run(root: Path, name: str, batching: str, gpus: int, seed: int, *, epoch_times=None, mae=3.0,
              lr=0.001, status="done", **extra) -> Path:
    run_dir = root / name
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("hydra's own: not a run\n")
    cfg = config(batching, gpus, seed, lr)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    if status == "failed":
        (run_dir / "failed.json").write_text(json.dumps({"error": "RuntimeError: out of memory", "rank": 3}))
    elif status == "done":
        epochs = [{"epoch": i + 1, "train_loss": 1.0, "val_mae": 2.0, "epoch_time_s": t,
                   "samples_per_s": 1000.0 / t, "lr": lr} for i, t in enumerate(epoch_times)]
        for epoch in epochs:
            epoch.update(extra.pop("split", {}) if epoch["epoch"] > 1 else {})
        results = {"config": cfg, "batching": batching, "model": "dcrnn_pgti", "world_size": gpus,
                   "epochs": epochs, "best_epoch": len(epochs), "test": metrics(mae), "val": metrics(mae),
                   "data_bytes": 1000 * gpus, "node_data_bytes": 1000 * gpus * gpus, "peak_rss_bytes": 5 * 2**20,
                   "setup_time_s": 1.0, "wall_time_s": 10.0, **extra}
        (run_dir / "results.json").write_text(json.dumps(results))
    return run_dir


@pytest.fixture
def study(tmp_path) -> Path:
    """A sweep: standard at 1, 2 (2 seeds each) and 4 GPUs (failed), index at 1 and 2 (+ one still
    running), dist_index at 1, and Slurm points not yet started at 2 and 4 GPUs."""
    sweep = tmp_path / "sweep"
    write_run(sweep, "std_1_0", "standard", 1, 0, epoch_times=[10.0, 4.0, 6.0], mae=3.0,
              baselines={"persistence": metrics(4.5)})
    write_run(sweep, "std_1_1", "standard", 1, 1, epoch_times=[10.0, 7.0], mae=3.2)
    write_run(sweep, "std_2_0", "standard", 2, 0, epoch_times=[5.0, 3.0], mae=3.1)
    write_run(sweep, "std_2_1", "standard", 2, 1, epoch_times=[5.0, 4.0], mae=3.3)
    write_run(sweep, "std_4_0", "standard", 4, 0, status="failed")
    write_run(sweep, "idx_1_0", "index", 1, 0, epoch_times=[8.0, 4.0])
    write_run(sweep, "idx_2_0", "index", 2, 0, epoch_times=[8.0, 2.5], peak_rss_node_bytes=9 * 2**20,
              split={"data_wait_s": 0.5, "compute_s": 1.5, "allreduce_s": 0.3, "eval_s": 0.7})
    write_run(sweep, "idx_2_1", "index", 2, 1, status="running")
    write_run(sweep, "dist_1_0", "dist_index", 1, 0, epoch_times=[8.0, 4.0], attempts=2)  # requeued once
    write_run(sweep, "dist_4_0", "dist_index", 4, 0, status="running")  # written, not submitted yet
    write_run(sweep, "dist_4_1", "dist_index", 4, 1, status="running")  # submitted, queued: no log yet
    (sweep / "only_hydra" / ".hydra").mkdir(parents=True)  # a job refused before it started: no run
    log = sweep / "idx_2_1" / "slurm" / "14" / "14_0_log.out"
    log.parent.mkdir(parents=True)
    log.write_text("epoch 1 ...\n")
    points = [{"overrides": ["batching=standard", "gpus=1", "trainer.seed=0"], "run_dir": "std_1_0", "job_id": "11"},
              {"overrides": ["batching=dist_index", "gpus=2", "trainer.seed=0"], "run_dir": "dist_2_0",
               "job_id": "12"},
              {"overrides": [], "run_dir": str(sweep / "dist_4_0"), "job_id": None},
              {"overrides": [], "run_dir": "dist_4_1", "job_id": "13", "logs": [str(sweep / "dist_4_1" / "x.out")]},
              {"overrides": [], "run_dir": "idx_2_1", "job_id": "14", "logs": [str(log)]}]
    (sweep / "sweep.json").write_text(json.dumps({"points": points}))
    return sweep


def row_of(rows, batching, gpus, seed):
    [row] = [r for r in rows if (r["batching"], r["gpus"], r["seed"]) == (batching, str(gpus), str(seed))]
    return row


def test_one_csv_row_per_run_with_speedup_and_efficiency(study):
    report = build_report([study], study)
    rows = read_csv(report.csv)
    assert len(rows) == 12  # 11 directories and the point without one; .hydra and only_hydra are no runs
    assert [(r["batching"], r["gpus"], r["seed"], r["status"]) for r in rows] == [
        ("standard", "1", "0", "done"), ("standard", "1", "1", "done"), ("standard", "2", "0", "done"),
        ("standard", "2", "1", "done"), ("standard", "4", "0", "failed"), ("index", "1", "0", "done"),
        ("index", "2", "0", "done"), ("index", "2", "1", "running"), ("dist_index", "1", "0", "done"),
        ("dist_index", "2", "0", "pending"), ("dist_index", "4", "0", "pending"), ("dist_index", "4", "1", "pending")]
    # Epoch time: median of the epochs after the first. Base of standard: mean(5, 7) = 6 at 1 GPU.
    assert float(row_of(rows, "standard", 1, 0)["epoch_time_s"]) == 5.0
    assert float(row_of(rows, "standard", 1, 0)["samples_per_s"]) == pytest.approx((250 + 1000 / 6) / 2)
    assert float(row_of(rows, "standard", 1, 1)["speedup"]) == pytest.approx(6 / 7)
    assert float(row_of(rows, "standard", 2, 0)["speedup"]) == pytest.approx(2.0)
    assert float(row_of(rows, "standard", 2, 1)["speedup"]) == pytest.approx(1.5)
    assert float(row_of(rows, "standard", 2, 1)["efficiency"]) == pytest.approx(0.75)
    assert float(row_of(rows, "index", 2, 0)["speedup"]) == pytest.approx(4.0 / 2.5)  # its own base
    assert float(row_of(rows, "index", 2, 0)["efficiency"]) == pytest.approx(0.8)
    index_2 = row_of(rows, "index", 2, 0)
    assert [float(index_2[k]) for k in ("data_wait_s", "compute_s", "allreduce_s", "eval_s")] == [0.5, 1.5, 0.3, 0.7]
    assert int(index_2["peak_rss_bytes_per_node"]) == 9 * 2**20 and index_2["series_bytes_per_rank"] == ""
    assert row_of(rows, "standard", 1, 0)["data_wait_s"] == ""  # not recorded: blank, not 0
    assert float(row_of(rows, "standard", 1, 1)["test_mape_pct_avg"]) == pytest.approx(3.2)
    assert row_of(rows, "standard", 1, 0)["job_id"] == "11"
    assert row_of(rows, "dist_index", 1, 0)["attempts"] == "2" and row_of(rows, "index", 1, 0)["attempts"] == "1"
    failed = row_of(rows, "standard", 4, 0)
    assert failed["error"] == "RuntimeError: out of memory" and failed["speedup"] == failed["epoch_time_s"] == ""
    pending = row_of(rows, "dist_index", 2, 0)  # dataset and model from the sweep's other points
    assert (pending["dataset"], pending["model"], pending["job_id"]) == ("synthetic", "dcrnn_pgti", "12")
    assert pending["run_dir"] == str(study / "dist_2_0")
    assert {r["variant"] for r in rows} == {""}


def test_markdown_has_mean_and_std_over_seeds_and_unfinished_runs(study):
    text = build_report([study], study).markdown.read_text()
    standard_2 = next(line for line in text.splitlines() if line.startswith("| synthetic | dcrnn_pgti | standard | 2 |"))
    # epoch time 3.5 ± 0.707 (sample std of 3 and 4), speedup (2 + 1.5)/2 ± 0.354, efficiency 0.875 ± 0.177
    assert "| 2/2 | 3.500 ± 0.707 |" in standard_2
    assert "| 1.750 ± 0.354 | 0.875 ± 0.177 |" in standard_2
    assert "| 3.100 ± 0.141 |" in text  # test MAE of the standard seeds at 1 GPU: 3.0 and 3.2
    assert "| synthetic | dcrnn_pgti | standard | 4 | 0/1 |" in text
    assert "| synthetic | dcrnn_pgti | index | 2 | 1/2 | 2.500 |" in text  # one seed: no ±
    assert "| failed | synthetic | dcrnn_pgti | standard | 4 | 0 |" in text and "RuntimeError: out of memory" in text
    assert "| running | synthetic | dcrnn_pgti | index | 2 | 1 | 14 |" in text
    assert "| pending | synthetic | dcrnn_pgti | dist_index | 2 | 0 | 12 |" in text
    assert "| synthetic | persistence | 4.500 | 5.500 | 4.500 |" in text  # baselines: MAE, RMSE, MAPE %
    for name in PLOTS:
        assert f"]({name})" in text


def test_plots_are_png_files(study):
    report = build_report([study], study / "out")
    assert sorted(p.name for p in report.plots) == sorted(PLOTS)
    for name in PLOTS:
        data = (study / "out" / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000


def test_fastest_epoch_time_option(study):
    rows = read_csv(build_report([study], study, epoch_time="fastest").csv)
    assert float(row_of(rows, "standard", 1, 0)["epoch_time_s"]) == 4.0  # of 4 and 6; the first epoch never


def test_runs_with_other_settings_are_their_own_line(tmp_path):
    write_run(tmp_path, "a1", "index", 1, 0, epoch_times=[9.0, 4.0])
    write_run(tmp_path, "a2", "index", 2, 0, epoch_times=[9.0, 2.0])
    write_run(tmp_path, "b1", "index", 1, 0, epoch_times=[9.0, 8.0], lr=0.01)
    write_run(tmp_path, "b2", "index", 2, 0, epoch_times=[9.0, 8.0], lr=0.01)
    rows = read_csv(build_report([tmp_path], tmp_path).csv)
    assert [(r["variant"], r["gpus"], float(r["speedup"])) for r in rows] == [
        ("trainer.lr=0.001", "1", 1.0), ("trainer.lr=0.001", "2", 2.0),
        ("trainer.lr=0.01", "1", 1.0), ("trainer.lr=0.01", "2", 1.0)]


def test_nothing_finished_still_reports(tmp_path):
    write_run(tmp_path, "f", "index", 1, 0, status="failed")
    write_run(tmp_path, "r", "index", 2, 0, status="running")
    bad = write_run(tmp_path, "bad", "index", 4, 0, epoch_times=[1.0])
    (bad / "results.json").write_text("{not json")
    report = build_report([tmp_path], tmp_path)
    assert [r["status"] for r in read_csv(report.csv)] == ["failed", "running", "failed"]
    assert report.plots == []
    text = report.markdown.read_text()
    assert "unreadable results.json" in text
    assert "*speedup*: not drawn, no finished run has the numbers it needs." in text


def test_cli_writes_the_report_and_refuses_bad_input(study, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        report_main([str(study), "--out", str(tmp_path / "r")])
    assert exit_.value.code == 0
    assert "12 runs (7 done, 1 failed, 1 running, 3 pending)" in capsys.readouterr().out
    assert (tmp_path / "r" / "report.md").is_file() and (tmp_path / "r" / "report.csv").is_file()

    for argv, message in (([str(tmp_path / "nope")], "expected a run or sweep directory, found no such directory"),
                          ([str(study), str(tmp_path)], "--out: expected a folder"),
                          ([str(tmp_path / "r")], "expected run directories")):
        with pytest.raises(SystemExit) as exit_:
            report_main(argv)
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err


def test_bad_sweep_file_names_the_file(tmp_path, capsys):
    (tmp_path / "sweep.json").write_text(json.dumps({"jobs": []}))
    with pytest.raises(SystemExit):
        report_main([str(tmp_path)])
    assert f"{tmp_path / 'sweep.json'}: expected JSON with a list 'points'" in capsys.readouterr().err


@pytest.mark.slow
def test_local_scaling_study_end_to_end(tmp_path):
    """The real `stgnn-train -m experiment=scaling_study_local`, cut to index batching and 2 epochs (4 runs:
    1 and 2 ranks x 2 seeds; the command line's values replace the preset's sweep), then `stgnn-report`."""
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "STGNN_CACHE": str(tmp_path / "cache")}
    sweep = tmp_path / "sweep"
    train = [str(bin_dir / "stgnn-train"), "-m", "experiment=scaling_study_local", "batching=index",
             "trainer.seed=0,1", "trainer.max_epochs=2", f"hydra.sweep.dir={sweep}"]
    trained = subprocess.run(train, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert trained.returncode == 0, trained.stderr[-3000:]
    out = subprocess.run([str(bin_dir / "stgnn-report"), str(sweep)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "4 runs (4 done)" in out.stdout
    rows = read_csv(sweep / "report.csv")
    assert sorted((r["batching"], r["gpus"], r["seed"], r["status"]) for r in rows) == [
        ("index", g, s, "done") for g in ("1", "2") for s in ("0", "1")]
    for row in rows:
        assert float(row["speedup"]) > 0 and float(row["test_mae_avg"]) > 0 and int(row["epochs"]) == 2
        assert int(row["data_bytes_per_node"]) == int(row["gpus"]) * int(row["data_bytes_per_rank"])
    assert " ± " in (sweep / "report.md").read_text()
    for name in PLOTS:
        assert (sweep / name).read_bytes().startswith(PNG_MAGIC)


def test_a_key_older_runs_lack_is_no_variant(tmp_path):
    """Runs written before the schema grew a key are averaged with those that have it at its default."""
    write_run(tmp_path, "old", "index", 1, 0, epoch_times=[9.0, 4.0])
    new = write_run(tmp_path, "new", "index", 1, 1, epoch_times=[9.0, 6.0])
    results = json.loads((new / "results.json").read_text())
    results["config"]["trainer"]["adam_eps"] = 1e-8
    (new / "results.json").write_text(json.dumps(results))
    rows = read_csv(build_report([tmp_path], tmp_path).csv)
    assert [(r["seed"], r["variant"], float(r["speedup"])) for r in rows] == [("0", "", 1.25), ("1", "", 5 / 6)]


def test_runs_on_gpus_show_their_device_memory(tmp_path):
    """GPU runs record the caching allocator's peak per rank: a column of the CSV and the report, and a third
    panel of the memory plot (two panels without it)."""
    from matplotlib.figure import Figure

    sweep = tmp_path / "sweep"
    write_run(sweep, "gpu_1", "index", 1, 0, epoch_times=[2.0, 1.0], device_peak_allocated_bytes=3 * 2**30,
              device_peak_reserved_bytes=4 * 2**30)
    write_run(sweep, "gpu_2", "dist_index", 2, 0, epoch_times=[2.0, 1.0], device_peak_allocated_bytes=2 * 2**30,
              device_peak_reserved_bytes=3 * 2**30)
    build_report([sweep], sweep)
    rows = read_csv(sweep / "report.csv")
    assert sorted(float(r["device_peak_bytes_per_rank"]) for r in rows) == [2 * 2**30, 3 * 2**30]
    assert "GPU peak / rank" in (sweep / "report.md").read_text()
    panels = []
    original = Figure.add_subplot
    Figure.add_subplot = lambda self, *a, **k: (panels.append(a), original(self, *a, **k))[1]
    try:
        build_report([sweep], sweep)
    finally:
        Figure.add_subplot = original
    assert (1, 3, 3) in panels  # the device panel beside host per rank and per node
