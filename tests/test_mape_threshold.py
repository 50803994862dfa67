"""MAPE that means something on any dataset: without a preset the threshold comes from the training
readings, a MAPE above 1,000% names the readings it comes from, and stgnn-eval rescores with metrics.*."""

import json
import math
import re

import numpy as np
import pytest
import torch

from helpers import compose_config
from stgnn_launch.cli.eval import evaluate
from stgnn_launch.config.load import save_run_config
from stgnn_launch.errors import UserError
from stgnn_launch.train.metrics import MetricSums, auto_mape_threshold
from stgnn_launch.train.run import run_training


def near_zero_files(tmp_path, steps=400, nodes=6):
    """Counts with a daily cycle, a quarter exact zeros and some float residue (1e-17): every reading is real."""
    rng = np.random.default_rng(0)
    t = np.arange(steps)[:, None]
    values = 40 + 20 * np.sin(2 * np.pi * t / 96) + rng.normal(0, 3, (steps, nodes))
    values[rng.random(values.shape) < 0.25] = 0.0
    values[rng.random(values.shape) < 0.05] = 1e-17
    adjacency = (np.eye(nodes) + np.roll(np.eye(nodes), 1, axis=1) > 0).astype(np.float32)
    np.save(tmp_path / "counts.npy", values.astype(np.float64))
    np.save(tmp_path / "adj.npy", adjacency)
    return ("dataset=custom", f"dataset.path={tmp_path / 'counts.npy'}", f"dataset.adj_path={tmp_path / 'adj.npy'}",
            "dataset.freq=15min", "dataset.null_value=null", "batching.batch_size=32", "trainer.max_epochs=1",
            "trainer.progress=false", "model=tgcn", "model.params.hidden=4")


def test_near_zero_readings_get_a_finite_threshold_and_eval_rescores(tmp_path, capsys):
    cfg = compose_config(*near_zero_files(tmp_path))
    assert cfg.metrics.mape_threshold is None  # no preset: from the training readings
    run_dir = tmp_path / "run"
    cfg.run_dir = str(run_dir)
    save_run_config(cfg, run_dir)  # as stgnn-train does: stgnn-eval reads it
    record = run_training(cfg, run_dir)
    out = capsys.readouterr().out
    threshold = record["mape_threshold"]
    assert math.isfinite(threshold) and 0.1 < threshold < 1.0  # 1% of an RMS magnitude of ~40
    assert f"MAPE over |y| > {threshold:g}, auto: 1% of the training readings' RMS magnitude" in out
    assert record["test"]["avg"]["mape"] < 10  # below 1,000%
    assert re.search(r"missing: +0 of [\d,]+ readings \(0\.0%\): 0 NaN or infinite \(dataset.null_value=null", out)

    # Rescored without retraining: an explicit threshold, and 0 (the float residue counts) explained.
    assert evaluate([str(run_dir), "metrics.mape_threshold=1"]) == 0
    out = capsys.readouterr().out
    assert "test metrics (masked, de-normalized; MAPE over |y| > 1, metrics.mape_threshold)" in out
    assert json.loads((run_dir / "eval_test_w1.json").read_text())["mape_threshold"] == 1
    assert evaluate([str(run_dir), "metrics.mape_threshold=0"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"note: model: MAPE above 1,000%: 100\.0% of its sum comes from [\d,]+ of [\d,]+ targets "
                     r"with \|y\| < 1e-1[67] \(readings near zero\)", out)
    with pytest.raises(UserError, match="metrics.mape_threshold: expected 0 or more"):
        evaluate([str(run_dir), "metrics.mape_threshold=-1"])
    with pytest.raises(UserError, match="stgnn-eval argument"):
        evaluate([str(run_dir), "trainer.lr=1"])


def test_missing_share_names_the_null_value(tmp_path, capsys):
    overrides = [o for o in near_zero_files(tmp_path) if o not in ("dataset.null_value=null", "model.params.hidden=4")]
    cfg = compose_config(*overrides, "trainer.max_epochs=1", "model=persistence")
    cfg.run_dir = str(tmp_path / "run")
    run_training(cfg, tmp_path / "run")
    line = next(l for l in capsys.readouterr().out.splitlines() if l.strip().startswith("missing:"))
    share = float(re.search(r"\(([\d.]+)%\)", line).group(1))
    assert 20 < share < 30  # the exact zeros
    assert "equal to dataset.null_value=0" in line and "set dataset.null_value=null if a 0 is a real reading" in line


def test_presets_keep_their_thresholds():
    assert compose_config("dataset=metr_la").metrics.mape_threshold == 0
    assert compose_config("dataset=losloop").metrics.mape_threshold == 0
    assert compose_config("dataset=montevideo_bus").metrics.mape_threshold == 0.5
    assert compose_config("dataset=metr_la", "metrics.mape_threshold=2").metrics.mape_threshold == 2


def test_auto_threshold_and_the_alarm_on_their_own():
    assert auto_mape_threshold(torch.tensor([3.0]), torch.tensor([4.0])) == pytest.approx(0.05)
    sums = MetricSums(2, torch.device("cpu"), mape_threshold=0.0)
    y = torch.tensor([5e-17, 10.0, 20.0, 30.0]).view(1, 1, 4, 1).repeat(1, 2, 1, 1)
    sums.update(y + 1.0, y, None)
    assert sums.result()["avg"]["mape"] > 10
    assert "from 2 of 8 targets with |y| < 1e-16" in sums.mape_alarm()
    calm = MetricSums(2, torch.device("cpu"), mape_threshold=1.0)
    calm.update(y + 1.0, y, None)
    assert calm.mape_alarm() is None and calm.result()["avg"]["mape"] < 1


def test_a_trainer_on_the_composed_config_scores_with_the_runs_rule(tmp_path):
    """benchmarks build a Trainer on the config as composed (threshold null): it scores as a run would."""
    from helpers import TINY
    from stgnn_launch.distributed.context import init_distributed
    from stgnn_launch.train.run import build_pipeline, plan_for
    from stgnn_launch.train.runlog import RunLog
    from stgnn_launch.train.trainer import Trainer

    cfg = compose_config(*TINY)
    plan, env = plan_for(cfg)
    ctx = init_distributed(env, plan.compute_device, plan.backend, plan.dist_timeout_s)
    pipe = build_pipeline(cfg, plan, ctx)
    log = RunLog(tmp_path, True)
    trainer = Trainer(cfg, plan, ctx, pipe.model, pipe.prepared, pipe.source, pipe.batcher, tmp_path, log)
    assert trainer.evaluate_sums("val")["model"].mape_threshold == pipe.facts.mape_threshold > 0
    log.close()
