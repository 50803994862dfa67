"""T-GCN's Los-loop protocol: split by time step, pooled-horizon metrics with accuracy, the preset."""

import json

import numpy as np
import pytest
import torch

from helpers import compose_config, random_series, shared_file
from stgnn_launch.data.prepare import PrepareSpec, prepare, split_starts_tgcn
from stgnn_launch.errors import UserError
from stgnn_launch.train.metrics import MetricSums


def check_parts(starts, num_steps, span, test_ratio, val_ratio):
    """Every window lies inside its part; the parts are train | val | test in time order."""
    train_steps = int(num_steps * (1 - test_ratio) + 1e-9)
    val_steps = round(train_steps * val_ratio)
    bounds = {"train": (0, train_steps - val_steps), "val": (train_steps - val_steps, train_steps),
              "test": (train_steps, num_steps)}
    for split, (lo, hi) in bounds.items():
        s = starts[split]
        assert s[0] == lo and s[-1] + span <= hi  # no window crosses a boundary
        assert s[-1] + span + 1 > hi or len(s) == 0  # ... and none that fits is left out (stride 1)
    return bounds


def test_tgcn_split_on_los_loop_sizes():
    # Los-loop: 2,016 steps; T-GCN keeps int(0.8 T) = 1,612 for training and 404 for testing.
    starts = split_starts_tgcn(2016, 12, 12, 1, test_ratio=0.2, val_ratio_of_train=0.2)
    bounds = check_parts(starts, 2016, 24, 0.2, 0.2)
    assert bounds == {"train": (0, 1290), "val": (1290, 1612), "test": (1612, 2016)}
    assert {k: len(v) for k, v in starts.items()} == {"train": 1267, "val": 299, "test": 381}
    # the validation part is the END of the training part, before any test window
    assert starts["train"][-1] < starts["val"][0] and starts["val"][-1] + 24 <= starts["test"][0]
    # a horizon-3 model (T-GCN's 15-minute model) gets more windows out of the same parts
    short = split_starts_tgcn(2016, 12, 3, 1, 0.2, 0.2)
    assert {k: len(v) for k, v in short.items()} == {"train": 1276, "val": 308, "test": 390}


def test_tgcn_split_with_stride_and_errors():
    starts = split_starts_tgcn(500, 6, 4, 3, test_ratio=0.25, val_ratio_of_train=0.3)
    for split, lo, hi in (("train", 0, 263), ("val", 263, 375), ("test", 375, 500)):
        s = starts[split]
        assert s[0] == lo and s[-1] + 10 <= hi and np.all(np.diff(s) == 3)
    with pytest.raises(UserError, match="at least window \\+ horizon = 24 steps in each"):
        split_starts_tgcn(100, 12, 12, 1, 0.2, 0.2)


def test_tgcn_prepare_fits_scaler_on_training_inputs_only():
    series = random_series(steps=1000, nodes=4, missing=0.0)
    series.values[640:] += 500.0  # validation and test far away: must not move the scaler
    prepared = prepare(series, PrepareSpec(split="tgcn", val_ratio_of_train=0.2))
    assert prepared.starts["val"][0] == 640 and prepared.starts["test"][0] == 800
    stop = int(prepared.starts["train"][-1]) + 12  # = 628: the training windows' inputs
    assert stop == 628
    head = prepared.values[:stop].double().numpy()
    assert prepared.scaler.mean.item() == pytest.approx(head.mean(), abs=1e-3)
    assert prepared.scaler.std.item() == pytest.approx(head.std(), abs=1e-3)
    with pytest.raises(UserError, match="dataset.split"):
        prepare(series, PrepareSpec(split="random"))


def test_split_option_is_validated_and_dcrnn_stays_the_default():
    with pytest.raises(UserError, match="dataset.split: expected one of dcrnn, tgcn, found 'random'"):
        compose_config("dataset.split=random")
    with pytest.raises(UserError, match="dataset.val_ratio_of_train"):
        compose_config("dataset.split=tgcn", "dataset.val_ratio_of_train=1.0")
    cfg = compose_config()
    assert cfg.dataset.split == "dcrnn" and cfg.trainer.pooled_steps == []
    # tgcn ignores train_ratio, so train_ratio + test_ratio may reach 1
    assert compose_config("dataset.split=tgcn", "dataset.test_ratio=0.4").dataset.test_ratio == 0.4


def pooled_np(preds, labels, k, null_value):
    """T-GCN's evaluation of a k-step forecast: every observed target of steps 1..k pooled."""
    p, y = preds[:, :k], labels[:, :k]
    mask = ~np.isnan(y) if np.isnan(null_value) else y != null_value
    e = np.where(mask, p - y, 0.0)
    y0 = np.where(mask, y, 0.0)
    return (np.abs(e).sum() / mask.sum(), np.sqrt((e ** 2).sum() / mask.sum()),
            1 - np.linalg.norm(e) / np.linalg.norm(y0))


@pytest.mark.parametrize("null_value", [0.0, float("nan")])
def test_pooled_metrics_and_accuracy_match_numpy(null_value):
    rng = np.random.default_rng(3)
    labels = rng.uniform(20, 70, (40, 12, 9, 1))
    preds = labels + rng.normal(0, 4, labels.shape)
    labels[rng.random(labels.shape) < 0.1] = null_value
    sums = MetricSums(12, torch.device("cpu"))
    for chunk in np.array_split(np.arange(40), 6):
        sums.update(torch.from_numpy(preds[chunk]), torch.from_numpy(labels[chunk]), null_value)
    pooled = sums.pooled([3, 6, 9, 12, 24])
    assert list(pooled) == ["3", "6", "9", "12"]  # beyond the horizon: left out
    for k in (3, 6, 9, 12):
        mae, rmse, acc = pooled_np(preds, labels, k, null_value)
        assert pooled[str(k)]["mae"] == pytest.approx(mae, abs=1e-9)
        assert pooled[str(k)]["rmse"] == pytest.approx(rmse, abs=1e-9)
        assert pooled[str(k)]["acc"] == pytest.approx(acc, abs=1e-9)
    # steps 1..12 pooled are the existing "avg"; step-wise keys are unchanged
    result = sums.result()
    assert set(result) == {"3", "6", "12", "avg"}
    for key in ("mae", "rmse", "mape", "count"):
        assert pooled["12"][key] == pytest.approx(result["avg"][key], abs=1e-12)


def test_accuracy_is_tgcn_formula_without_missing():
    """No missing readings (Los-loop): acc = 1 - ||Y - Ŷ||_F / ||Y||_F as T-GCN's code computes it."""
    rng = np.random.default_rng(4)
    labels = rng.uniform(20, 70, (30, 3, 207, 1))
    preds = labels + rng.normal(0, 3, labels.shape)
    sums = MetricSums(3, torch.device("cpu"))
    sums.update(torch.from_numpy(preds), torch.from_numpy(labels), 0.0)
    y, p = labels.reshape(-1, 207), preds.reshape(-1, 207)  # T-GCN: [samples * pre_len, nodes]
    expected = 1 - np.linalg.norm(y - p, "fro") / np.linalg.norm(y, "fro")
    assert sums.pooled([3])["3"]["acc"] == pytest.approx(expected, abs=1e-12)


def los_loop_overrides():
    speed = shared_file("los-loop/los_speed.csv")
    adj = shared_file("los-loop/los_adj.csv")
    return (f"dataset.path={speed}", f"dataset.adj_path={adj}")


def test_losloop_experiment_composes():
    cfg = compose_config("experiment=losloop", "model=gwnet")
    assert cfg.dataset.name == "losloop" and cfg.dataset.split == "tgcn"
    assert cfg.dataset.test_ratio == 0.2 and cfg.batching.window == 12 and cfg.batching.horizon == 12
    assert cfg.trainer.pooled_steps == [3, 6, 9, 12] and cfg.model.name == "gwnet"
    for model in ("tgcn", "a3tgcn", "dcrnn", "dcrnn_pgti", "gwnet"):  # the tuned per-model presets
        tuned = compose_config(f"experiment=losloop_{model}")
        assert tuned.model.name == model and tuned.dataset.split == "tgcn"
        assert tuned.trainer.pooled_steps == [3, 6, 9, 12]


def test_losloop_experiment_runs_one_tiny_epoch(tmp_path):
    from stgnn_launch.train.run import run_training

    cfg = compose_config("experiment=losloop", *los_loop_overrides(), "model=tgcn", "model.params.hidden=4",
                         "trainer.max_epochs=1", "trainer.max_batches_per_epoch=2", "trainer.progress=false",
                         "batching.eval_batch_size=128")
    cfg.run_dir = str(tmp_path)
    record = run_training(cfg, tmp_path)
    assert record["dataset"]["windows"] == {"train": 1267, "val": 299, "test": 381}
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved["test"]) == {"3", "6", "12", "avg"}  # the usual record, unchanged
    assert list(saved["test_pooled"]) == ["15", "30", "45", "60"]
    assert list(saved["val_pooled"]) == ["15", "30", "45", "60"]
    for metrics in saved["test_pooled"].values():
        assert metrics["mae"] > 0 and metrics["rmse"] >= metrics["mae"] and 0 < metrics["acc"] < 1
        assert metrics["count"] % 207 == 0
    assert saved["test_pooled"]["15"]["count"] == 381 * 3 * 207
    assert saved["test_pooled"]["60"]["mae"] == pytest.approx(saved["test"]["avg"]["mae"], rel=1e-12)


# Test metrics of the run below, recorded with the per-batch finish before the CPU input table
# (commit 951da9d, batching=index, standard and dist_index alike): normalising once at load must keep them.
LOSLOOP_TINY_TGCN_TEST = {
    "15": {"mae": 9.484868371157807, "rmse": 13.254680783142959, "acc": 0.7739901158093456},
    "30": {"mae": 9.33530287059487, "rmse": 14.148472170676325, "acc": 0.7588143459861323},
    "45": {"mae": 9.599887816148666, "rmse": 14.528740062448541, "acc": 0.7524020699087816},
    "60": {"mae": 9.154787008313166, "rmse": 14.046364272784258, "acc": 0.7606928602804731},
}


@pytest.mark.parametrize("mode", ["index", "dist_index"])
def test_masked_metrics_on_los_loop_are_those_of_the_per_batch_finish(tmp_path, mode):
    """index on a CPU z-scores the series once (the input table); dist_index finishes per batch. Both
    train and evaluate to the masked metrics recorded before the change, within 1e-5 relative."""
    from stgnn_launch.train.run import run_training

    cfg = compose_config("experiment=losloop", *los_loop_overrides(), "model=tgcn", "model.params.hidden=4",
                         "trainer.max_epochs=1", "trainer.max_batches_per_epoch=3", "trainer.progress=false",
                         "batching.eval_batch_size=128", f"batching={mode}")
    cfg.run_dir = str(tmp_path)
    run_training(cfg, tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())["test_pooled"]
    for minutes, expected in LOSLOOP_TINY_TGCN_TEST.items():
        for key, value in expected.items():
            assert saved[minutes][key] == pytest.approx(value, rel=1e-5), (minutes, key)
