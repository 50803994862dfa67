"""Multi-process DDP for real: gloo ranks on this CPU, started by torchrun through stgnn-train."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import TINY, rank_process_ids

pytestmark = pytest.mark.slow


def stgnn_train(run_dir: Path, *overrides: str, wait: bool = True, timeout: float = 300):
    cmd = [sys.executable, "-m", "stgnn_launch.cli.train", *TINY, f"hydra.run.dir={run_dir}", *overrides]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if not wait:
        return proc
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


@pytest.mark.parametrize("base", ["none", "auto"])  # auto: the fitted blend under DDP
def test_two_rank_dist_index_training_and_world_size_independent_eval(tmp_path, base):
    run_dir = tmp_path / "run"
    code, out = stgnn_train(run_dir, "gpus=2", "batching=dist_index", "trainer.max_epochs=2",
                            "trainer.save_predictions=true", f"model.base={base}")
    assert code == 0, out
    record = json.loads((run_dir / "results.json").read_text())
    assert record["world_size"] == 2 and record["backend"] == "gloo" and record["batching"] == "dist_index"
    assert [e["epoch"] for e in record["epochs"]] == [1, 2]
    # every test window evaluated once: the mask count equals windows x horizon x sensors (minus missing)
    windows = record["dataset"]["windows"]["test"]
    assert 0.9 * windows * 12 * 10 < record["test"]["avg"]["count"] <= windows * 12 * 10
    metrics = {}
    for gpus in (1, 2):
        proc = subprocess.run([sys.executable, "-m", "stgnn_launch.cli.eval", str(run_dir), f"gpus={gpus}"],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        metrics[gpus] = json.loads((run_dir / f"eval_test_w{gpus}.json").read_text())["metrics"]
        if gpus == 1:  # the run's config has save_predictions: stgnn-eval writes them too
            single = np.load(run_dir / "predictions_test.npz")
    # the two ranks' predictions, gathered on rank 0 alone, in window order: those of one process
    gathered = np.load(run_dir / "predictions.npz")
    assert gathered["predictions"].shape == single["predictions"].shape
    np.testing.assert_allclose(gathered["predictions"], single["predictions"], rtol=1e-5, atol=1e-5)
    assert np.array_equal(gathered["targets"], single["targets"])
    for horizon in ("3", "6", "12", "avg"):
        for name in ("mae", "rmse", "mape"):
            assert metrics[1][horizon][name] == pytest.approx(metrics[2][horizon][name], abs=1e-6)
            assert metrics[1][horizon][name] == pytest.approx(record["test"][horizon][name], abs=1e-6)


def test_more_ranks_than_the_node_has_is_a_clear_error(tmp_path):
    cores = len(os.sched_getaffinity(0))
    if torch.cuda.is_available():
        pytest.skip("this node has GPUs; the CPU capacity message does not apply")
    code, out = stgnn_train(tmp_path / "run", f"gpus={cores + 1}", "batching=dist_index")
    assert code == 2
    assert f"gpus: expected at most {cores} on this node" in out and f"found {cores + 1}" in out


def test_a_killed_rank_is_restarted_and_the_run_resumes(tmp_path):
    """SIGKILL one rank mid-training; torchrun restarts the ranks, which resume from the last checkpoint."""
    run_dir = tmp_path / "run"
    # Epochs of a few seconds, so that a kill sent as soon as epoch 1's checkpoint appears lands inside
    # epoch 2 (or at worst 3) on a fast machine as on a loaded one.
    proc = stgnn_train(run_dir, "gpus=2", "batching=dist_index", "trainer.max_epochs=3", "launcher.max_restarts=1",
                       "dataset.num_nodes=30", "dataset.num_steps=8000", "model.params.hidden=32", wait=False)
    last = run_dir / "checkpoints" / "last.pt"
    deadline = time.time() + 240
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert last.exists(), proc.communicate()[0]
    victims = rank_process_ids(run_dir)
    assert len(victims) == 2
    os.kill(victims[1], signal.SIGKILL)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    resumed = re.search(r"resumed from \S+ at (?:the end of )?epoch (\d+)", out)
    assert resumed is not None, out
    assert int(resumed.group(1)) in (1, 2), out  # the kill hit training, not the end of the run
    record = json.loads((run_dir / "results.json").read_text())
    assert [e["epoch"] for e in record["epochs"]] == [1, 2, 3]
    assert record["world_size"] == 2
    assert all(v == v for v in (record["test"]["avg"]["mae"], record["test"]["avg"]["rmse"]))


def test_predictions_travel_to_rank_0_only(monkeypatch, tmp_path):
    """gather_object to rank 0 over the host group: the other ranks hand theirs over and receive nothing."""
    from types import SimpleNamespace

    from stgnn_launch.train import predictions

    calls = []
    monkeypatch.setattr(predictions.dist, "gather_object",
                        lambda obj, out=None, dst=0, group=None: calls.append((out, dst, group)))
    monkeypatch.setattr(predictions.dist, "all_gather_object", lambda *a, **k: pytest.fail("all_gather_object"))
    ctx = SimpleNamespace(distributed=True, is_main=False, world_size=2, control="host-group")
    plan = SimpleNamespace(eval_batch_size=4, schedule_rank=1, schedule_world=2)
    x, y = torch.zeros(2, 12, 3, 2), torch.ones(2, 12, 3, 1)
    trainer = SimpleNamespace(model=torch.nn.Identity(), plan=plan, ctx=ctx,
                              source=SimpleNamespace(count=lambda split: 4),
                              feed=SimpleNamespace(batches=lambda split, positions: [(x, y)]),
                              _predict=lambda model, x, y: torch.zeros(2, 12, 3, 1))
    predictions.save_predictions(trainer, "test", tmp_path / "p.npz")
    assert calls == [(None, 0, "host-group")] and not (tmp_path / "p.npz").exists()
