"""Preemption without loss: a signal inside an epoch stops every rank at the next step boundary, rank 0
writes a step checkpoint with each rank's random state, and the resumed run ends with exactly the weights
of an uninterrupted one (bitwise, on CPU) at world sizes 1, 2 and 4."""

import json
import os
import subprocess
import sys

import pytest
import torch

from helpers import compose_config, tiny
from stgnn_launch.config.load import save_run_config
from stgnn_launch.train import checkpoint

pytestmark = pytest.mark.slow
BASE = [*tiny("dcrnn"), "trainer.max_epochs=3", "trainer.patience=50", "batching=dist_index",
        "dataset.num_steps=500", "trainer.num_threads=1", "trainer.deterministic=true"]


def train(run_dir, gpus, *extra, signal_at=None, resume=False):
    """The ranks as torchrun starts them on a node (4 ranks on this 2-core machine: stgnn-train itself
    refuses more ranks than cores, so the worker is started directly, as the Slurm templates do)."""
    env = {k: v for k, v in os.environ.items() if k not in ("STGNN_SIGNAL_AT", "STGNN_RESUME")}
    if signal_at:
        env["STGNN_SIGNAL_AT"] = signal_at
    if resume:
        env["STGNN_RESUME"] = "1"
    if not (run_dir / "config.yaml").is_file():
        cfg = compose_config(*BASE, *extra, "launcher.cpu=true")
        cfg.run_dir = str(run_dir)
        run_dir.mkdir(parents=True)
        save_run_config(cfg, run_dir)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
           "-m", "stgnn_launch.train.worker", str(run_dir)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("gpus", [1, 2, 4])
def test_interrupted_mid_epoch_resumes_to_the_same_weights(tmp_path, gpus):
    straight = train(tmp_path / "straight", gpus)
    assert straight.returncode == 0, straight.stderr[-3000:]
    stopped = train(tmp_path / "stopped", gpus, signal_at="2:3")
    # one process stops at the signalled step; ranks read their vote one step later (no blocking vote per step)
    step = 3 if gpus == 1 else 4
    assert stopped.returncode != 0 and f"stopping at epoch 2 step {step}" in stopped.stdout + stopped.stderr
    state = checkpoint.load(tmp_path / "stopped" / "checkpoints" / "last.pt")
    assert state["epoch"] == 1 and state["in_epoch"]["epoch"] == 2 and state["in_epoch"]["step"] == step
    assert len(state["rng_per_rank"]) == gpus and state["attempt"] == 1 and state["run_wall_time_s"] > 0
    assert not (tmp_path / "stopped" / "results.json").exists() and not (tmp_path / "stopped" / "failed.json").exists()
    resumed = train(tmp_path / "stopped", gpus, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"at epoch 2 step {step}" in resumed.stdout
    a = checkpoint.load(tmp_path / "straight" / "checkpoints" / "last.pt")["model"]
    b = checkpoint.load(tmp_path / "stopped" / "checkpoints" / "last.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k] for k in a)
    first = json.loads((tmp_path / "straight" / "results.json").read_text())
    second = json.loads((tmp_path / "stopped" / "results.json").read_text())
    assert [e["train_loss"] for e in first["epochs"]] == [e["train_loss"] for e in second["epochs"]]
    assert first["test"] == second["test"]
    assert first["attempts"] == 1 and second["attempts"] == 2  # the step checkpoint's time is in wall_time_s
    assert second["wall_time_s"] == state["run_wall_time_s"] + second["attempt_wall_time_s"]


def test_periodic_step_checkpoints(tmp_path):
    """trainer.checkpoint_every_min also writes step checkpoints inside epochs (here: at every step)."""
    run = train(tmp_path / "run", 1, "trainer.checkpoint_every_min=0.00001", "trainer.max_epochs=1")
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "run" / "results.json").is_file()
    state = checkpoint.load(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["in_epoch"] is None and state["epoch"] == 1  # the end-of-epoch checkpoint came last
