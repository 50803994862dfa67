"""A kill at any moment of a checkpoint write, then a resume: the same test metrics and best epoch as a run
that was never interrupted (issue 22, point 1: last.pt and best.pt must never disagree)."""

import subprocess
import sys
import textwrap

import pytest

from helpers import REPO, compose_config, tiny
from stgnn_launch.train import checkpoint
from stgnn_launch.train.run import run_training

BASE = (*tiny("tgcn"), "trainer.max_batches_per_epoch=4", "trainer.patience=50", "trainer.max_epochs=2")

# In a child process: the k-th step of writing a checkpoint (torch.save of a temporary file, or its rename
# over last.pt / best.pt) ends the process at once, as SIGKILL would: no finally, no cleanup.
KILLED_RUN = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {tests!r})
    import torch
    from helpers import compose_config
    from stgnn_launch import atomic_write
    from stgnn_launch.train.run import run_training

    kill_at, count = {kill_at}, [0]

    def step(name):
        count[0] += 1
        if count[0] == kill_at:
            os._exit(137)

    real_save, real_replace = torch.save, os.replace
    def save(obj, f, *a, **k):
        name = str(getattr(f, "name", f))  # a path, or the open file save_atomic hands it
        if name.endswith(".tmp") and ".pt." in name:
            step("save")
        return real_save(obj, f, *a, **k)
    def replace(src, dst, *a, **k):
        if str(dst).endswith(".pt"):
            step("replace")
        real_replace(src, dst, *a, **k)
        if str(dst).endswith(".pt") and count[0] + 1 == kill_at and kill_at == {after_all}:
            os._exit(137)  # after the last rename, before anything else
    torch.save, atomic_write.os.replace = save, replace
    cfg = compose_config(*{overrides!r})
    cfg.run_dir = {run_dir!r}
    from pathlib import Path
    run_training(cfg, Path({run_dir!r}))
""")


def run(run_dir, *overrides):
    cfg = compose_config(*BASE, *overrides)
    cfg.run_dir = str(run_dir)
    return run_training(cfg, run_dir)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    record = run(tmp_path_factory.mktemp("straight") / "run")
    assert record["best_epoch"] == 2  # both epochs improve: epoch 2's write replaces last.pt and best.pt
    return record


# Epoch 1's write has 4 steps (save last, rename last, save best, rename best); epoch 2's are steps 5-8,
# and 9 is "after the last rename" of epoch 2.
@pytest.mark.parametrize("kill_at", [5, 6, 7, 8, 9])
def test_a_kill_at_each_step_of_a_checkpoint_write_then_resume_tests_the_right_epoch(tmp_path, straight, kill_at):
    run_dir = tmp_path / "run"
    script = KILLED_RUN.format(tests=str(REPO / "tests"), kill_at=kill_at, after_all=9, overrides=BASE,
                               run_dir=str(run_dir))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 137, proc.stderr[-2000:]
    assert not (run_dir / "results.json").exists()
    resumed = run(run_dir, "trainer.resume=true")
    assert resumed["best_epoch"] == straight["best_epoch"]
    assert resumed["test"] == straight["test"]
    assert resumed["val"] == straight["val"]
    best = checkpoint.load(run_dir / "checkpoints" / "best.pt")
    assert best["epoch"] == checkpoint.load(run_dir / "checkpoints" / "last.pt")["best_epoch"] == 2
    assert not list(run_dir.rglob("*.tmp"))  # the killed write's temporary file is gone


def test_evaluation_reads_the_best_epoch_last_pt_names_and_refuses_a_stale_best_pt(tmp_path):
    import torch
    from stgnn_launch.errors import UserError

    ckpt = tmp_path / "checkpoints"
    checkpoint.save_atomic({"epoch": 1, "model": {"w": torch.zeros(2)}}, ckpt / "best.pt")  # stale: epoch 1
    checkpoint.save_atomic({"epoch": 2, "best_epoch": 2, "best_model": {"w": torch.ones(2)}}, ckpt / "last.pt")
    epoch, weights = checkpoint.best_weights(ckpt)
    assert epoch == 2 and torch.equal(weights["w"], torch.ones(2))
    # a checkpoint from before best_model existed cannot say which weights are best: refused, not guessed
    checkpoint.save_atomic({"epoch": 2, "best_epoch": 2}, ckpt / "last.pt")
    with pytest.raises(UserError, match="expected the best epoch 2 .* found epoch 1"):
        checkpoint.best_weights(ckpt)
