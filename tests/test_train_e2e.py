"""End-to-end training through the real config: same seed, same numbers, whatever the batching."""

import json


from helpers import TINY, compose_config
from stgnn_launch.train.run import run_training


def train(tmp_path, name, *overrides):
    cfg = compose_config(*TINY, *overrides)
    run_dir = tmp_path / name
    cfg.run_dir = str(run_dir)
    record = run_training(cfg, run_dir)
    assert json.loads((run_dir / "results.json").read_text())["test"] == record["test"]
    return record


def test_standard_and_index_train_identically(tmp_path):
    standard = train(tmp_path, "standard", "batching=standard", "trainer.max_epochs=2")
    index = train(tmp_path, "index", "batching=index", "trainer.max_epochs=2")
    assert [e["train_loss"] for e in standard["epochs"]] == [e["train_loss"] for e in index["epochs"]]
    assert [e["val_mae"] for e in standard["epochs"]] == [e["val_mae"] for e in index["epochs"]]
    assert standard["test"] == index["test"]  # to the last bit
    assert index["data_bytes"] < 0.1 * standard["data_bytes"]


def test_results_json_has_the_record(tmp_path):
    record = train(tmp_path, "run", "trainer.max_epochs=2")
    assert record["batching"] == "index" and record["world_size"] == 1
    assert [e["epoch"] for e in record["epochs"]] == [1, 2]
    for epoch in record["epochs"]:
        assert set(epoch) >= {"epoch", "train_loss", "val_mae", "epoch_time_s", "samples_per_s"}
        assert epoch["samples_per_s"] > 0
    assert set(record["test"]) == {"3", "6", "12", "avg"}
    for metrics in record["test"].values():
        assert all(metrics[k] == metrics[k] and metrics[k] > 0 for k in ("mae", "rmse", "mape"))
    assert record["config"]["batching"]["window"] == 12
    assert record["data_bytes"] > 0 and record["peak_rss_bytes"] > 10**7
    assert "git_sha" in record
    assert 0 < record["setup_time_s"] < record["wall_time_s"]
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
    assert (tmp_path / "run" / "checkpoints" / "best.pt").is_file()


def test_training_lowers_the_loss(tmp_path):
    record = train(tmp_path, "run", "trainer.max_epochs=3", "trainer.lr=0.01")
    losses = [e["train_loss"] for e in record["epochs"]]
    assert losses[-1] < losses[0]


def test_run_reports_where_time_goes_and_what_it_beat(tmp_path):
    record = train(tmp_path, "run", "trainer.max_epochs=2")
    assert 0 <= record["data_wait_fraction"] < 1
    for epoch in record["epochs"]:
        assert epoch["data_wait_s"] >= 0 and epoch["compute_s"] > 0 and epoch["eval_s"] > 0
        assert epoch["allreduce_s"] == 0  # one process: no gradient all-reduce
        assert abs(epoch["data_wait_s"] + epoch["compute_s"] - epoch["epoch_time_s"]) < 1e-6
    # persistence and the historical average scored on the same test windows as the model
    assert set(record["baselines"]) == {"persistence", "historical_average"}
    assert record["baselines"]["persistence"]["avg"]["count"] == record["test"]["avg"]["count"]
    assert isinstance(record["beats_persistence"], bool)
    assert record["series_bytes_per_rank"] == record["series_bytes_per_node"] == 700 * 10 * 4
    assert record["plan"]["prefetch"] and record["plan"]["data_device"] == "cpu"


def test_a_run_without_a_terminal_can_be_watched(tmp_path):
    """stdout is not a terminal here: start-up block, a train.log with everything, metrics.csv per epoch."""
    import csv
    import subprocess
    import sys

    run_dir = tmp_path / "watched"
    proc = subprocess.run([sys.executable, "-m", "stgnn_launch.cli.train", *TINY, "trainer.max_epochs=2",
                           "trainer.log_every_s=0.01", f"hydra.run.dir={run_dir}"],
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    for fact in ("stgnn-launch run", "dataset:", "700 steps x 10 nodes", "windows:", "model:", "parameters",
                 "batching:", "ranks:", "batch:", "16 per rank", "data bytes:", "run dir:"):
        assert fact in proc.stdout
    assert "epoch 1: step" in proc.stdout  # progress lines without a terminal
    log = (run_dir / "train.log").read_text()
    assert "stgnn-launch run" in log and "epoch 2: train_loss" in log and "test metrics" in log
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"] and float(rows[1]["val_mae"]) > 0
    assert "<- persistence" in proc.stdout  # the baseline beside the model


def test_results_json_is_strict_json_and_a_failed_run_is_marked(tmp_path):
    from stgnn_launch.train.record import strict_json, write_json_atomic

    write_json_atomic({"a": float("nan"), "b": [float("inf"), 1.5]}, tmp_path / "x.json")
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": None, "b": [None, 1.5]}
    import numpy as np

    assert strict_json(np.timedelta64(5, "m")) == 300.0
    cfg = compose_config(*TINY, "model.params.hidden=-1")
    with __import__("pytest").raises(Exception, match="model.params.hidden"):
        run_training(cfg, tmp_path / "bad")
    failed = json.loads((tmp_path / "bad" / "failed.json").read_text())
    assert "model.params.hidden" in failed["error"] and not (tmp_path / "bad" / "results.json").exists()


def test_predictions_are_saved_denormalised_in_window_order(tmp_path):
    import numpy as np

    record = train(tmp_path, "run", "trainer.max_epochs=1", "trainer.save_predictions=true")
    saved = np.load(tmp_path / "run" / "predictions.npz")
    windows = record["dataset"]["windows"]["test"]
    assert saved["predictions"].shape == saved["targets"].shape == saved["mask"].shape == (windows, 12, 10, 1)
    mask = saved["mask"]
    mae = np.abs(saved["predictions"] - saved["targets"])[mask].mean()
    assert abs(mae - record["test"]["avg"]["mae"]) < 1e-4 and mask.sum() == record["test"]["avg"]["count"]
    assert 20 < saved["targets"][mask].mean() < 90  # speeds in mph: de-normalised, not z-scores


def test_the_all_reduce_timer_is_read_per_epoch_not_per_step(tmp_path, monkeypatch):
    """Reading the timer waits for the device's last reduction (CUDA events under NCCL): a host sync that
    would stall every step. It is read when an epoch starts and ends, and at a step checkpoint only."""
    from stgnn_launch.train.comm_timer import CommTimer

    reads = []
    monkeypatch.setattr(CommTimer, "seconds", property(lambda self: reads.append(1) or self.host_seconds))
    record = train(tmp_path, "run", "trainer.max_epochs=2")
    steps = record["dataset"]["windows"]["train"] / 16  # batch 16 (TINY)
    assert steps > 10  # enough steps that a read per step would show
    assert len(reads) == 2 * 2, f"expected 2 reads per epoch, found {len(reads)} over 2 epochs"
