"""results.json through rundir's typed records: the keys a run writes (pinned from before the records
existed), its numbers, older files that lack newer keys, and the Scaler as the one z-score."""

import json

import pytest
import torch

from helpers import compose_config
from stgnn_launch.data.prepare import Scaler
from stgnn_launch.report.collect import DONE, read_run
from stgnn_launch.rundir import EpochStats, ResultsRecord, read_results

# The record's keys in order, as train/run.py's dict wrote them before ResultsRecord (2 synthetic runs and
# a Los-loop one agreed); a key added or lost is a change every reader of results.json must hear about.
RESULTS_KEYS = [
    "config", "batching", "model", "world_size", "backend", "device", "plan", "dataset", "parameters", "epochs",
    "best_epoch", "val", "test", "baselines", "mape_threshold", "data_wait_fraction", "data_bytes",
    "node_data_bytes", "series_bytes_per_rank", "series_bytes_per_node", "host_data_bytes_per_rank",
    "host_data_bytes_per_node", "device_data_bytes_per_rank", "device_data_bytes_per_node", "peak_rss_bytes",
    "device_peak_allocated_bytes", "device_peak_reserved_bytes", "setup_time_s", "wall_time_s", "attempts",
    "attempt_wall_time_s", "git_sha", "host", "beats_persistence"]
DATASET_KEYS = ["name", "num_steps", "num_nodes", "num_features", "start", "step", "step_s", "time_shard",
                "node_shared", "filled_readings", "series_bytes", "warnings", "windows", "missing_readings",
                "readings", "mape_threshold", "mape_threshold_rule"]
PLAN_KEYS = ["shard", "node_shared", "data_device", "series_dtype", "prefetch", "threads", "batch_size",
             "global_batch_size", "lr", "notes"]
EPOCH_KEYS = ["epoch", "train_loss", "val_mae", "epoch_time_s", "samples_per_s", "lr", "data_wait_s", "compute_s",
              "allreduce_s", "eval_s"]
# This config's numbers before the refactor (1 epoch of 5 batches): test MAE per horizon, val MAE, loss.
BEFORE = {"3": 3.7558351699111916, "6": 3.7076203956059754, "12": 4.196904192017195, "avg": 4.08920400443245}
BEFORE_VAL, BEFORE_LOSS, BEFORE_PERSISTENCE = 3.6336752562697936, 8.604329109191895, 2.549366440313549


def test_a_run_writes_the_same_keys_and_numbers_as_before_the_records(tmp_path):
    from stgnn_launch.train.run import run_training

    # model.base=none: the numbers were recorded before the refactor, when the bare network was the default
    cfg = compose_config("trainer.max_epochs=1", "trainer.max_batches_per_epoch=5", "trainer.progress=false",
                         "dataset.num_nodes=20", "dataset.num_steps=800", "model.base=none")
    cfg.run_dir = str(tmp_path)
    returned = run_training(cfg, tmp_path)
    written = json.loads((tmp_path / "results.json").read_text())
    assert list(written) == RESULTS_KEYS and list(returned) == RESULTS_KEYS
    assert list(written["dataset"]) == DATASET_KEYS and list(written["plan"]) == PLAN_KEYS
    assert [list(e) for e in written["epochs"]] == [EPOCH_KEYS]
    assert written["dataset"]["windows"] == {"train": 544, "val": 78, "test": 155}
    assert written["parameters"] == 13644 and written["test"]["avg"]["count"] == 37019
    # bitwise on the machine that recorded them; other CPUs may round a matmul differently
    assert {h: m["mae"] for h, m in written["test"].items()} == pytest.approx(BEFORE, rel=1e-4)
    assert written["val"]["avg"]["mae"] == pytest.approx(BEFORE_VAL, rel=1e-4)
    assert written["epochs"][0]["train_loss"] == pytest.approx(BEFORE_LOSS, rel=1e-4)
    assert written["baselines"]["persistence"]["avg"]["mae"] == BEFORE_PERSISTENCE  # no training involved
    record = read_results(tmp_path)
    assert record.to_dict() == written and list(record.to_dict()) == RESULTS_KEYS  # nothing lost or added
    assert isinstance(record.epochs[0], EpochStats) and record.dataset.windows["test"] == 155
    assert record.plan.batch_size == 64 and record.extra == {}


def old_record() -> dict:
    """A results.json of an early version: no plan, attempts, memory split or per-epoch time split."""
    metrics = {h: {"mae": 3.0, "rmse": 4.0, "mape": 0.1, "count": 10} for h in ("3", "6", "12", "avg")}
    return {"config": {"model": {"name": "tgcn"}, "dataset": {"name": "synthetic"}}, "batching": "index",
            "model": "tgcn", "world_size": 2, "epochs": [{"epoch": 1, "train_loss": 1.0, "val_mae": 2.0,
                                                          "epoch_time_s": 5.0, "samples_per_s": 10.0, "lr": 0.01}],
            "best_epoch": 1, "val": metrics, "test": metrics, "data_bytes": 100, "peak_rss_node_bytes": 7,
            "wall_time_s": 9.0}


def test_an_older_results_json_loads_with_its_missing_keys_none_and_its_own_keys_kept(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps(old_record()))
    record = read_results(tmp_path)
    assert record.world_size == 2 and record.test["avg"]["mae"] == 3.0 and record.epochs[0].val_mae == 2.0
    assert record.attempts is None and record.plan is None and record.dataset is None
    assert record.epochs[0].eval_s is None and record.beats_persistence is None
    assert record.extra == {"peak_rss_node_bytes": 7}  # a key this version does not write, kept as it was
    assert record.to_dict()["peak_rss_node_bytes"] == 7 and "beats_persistence" not in record.to_dict()
    run = read_run(tmp_path)  # stgnn-report reads it as a finished run
    assert run.status == DONE and run.results.wall_time_s == 9.0 and run.config["model"]["name"] == "tgcn"


def test_json_that_is_not_a_record_is_an_unreadable_run(tmp_path):
    (tmp_path / "results.json").write_text("[1, 2]")
    run = read_run(tmp_path)
    assert run.status == "failed" and "ResultsRecord: expected a JSON object, found list" in run.error
    with pytest.raises(TypeError):
        ResultsRecord.from_dict({"epochs": [3]})


def test_the_scaler_is_the_hand_written_z_score_to_the_bit():
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(5, 7, 3, generator=gen) * 13 + 40
    scaler = Scaler(torch.tensor([40.1, -2.5, 7.0]), torch.tensor([12.9, 0.3, 3.3]))
    assert torch.equal(scaler.transform(values), (values - scaler.mean) / scaler.std)
    assert torch.equal(scaler.transform(values[..., :2], features=2), (values[..., :2] - scaler.mean[:2]) / scaler.std[:2])
    head = scaler.head(1).to(torch.device("cpu"))
    assert torch.equal(head.inverse(values[..., :1]), values[..., :1] * scaler.std[:1] + scaler.mean[:1])
    out = torch.empty_like(values)
    scaler.transform_channels(values, out)
    for i in range(3):  # per channel with Python floats, as the batches' finisher always did
        assert torch.equal(out[..., i], (values[..., i] - float(scaler.mean[i])) / float(scaler.std[i]))
    assert scaler.host_std == tuple(float(v) for v in scaler.std)
