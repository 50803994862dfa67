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
