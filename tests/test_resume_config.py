"""A resume may not change what its checkpoint was trained on (issue 22, point 6): refused in one line naming
the keys, before anything is written; epochs, patience and logging may change."""

import subprocess
import sys

from helpers import TINY, compose_config, read_csv
from stgnn_launch.config.resume import changed_keys


def train(run_dir, *overrides):
    return subprocess.run([sys.executable, "-m", "stgnn_launch.cli.train", *TINY, "trainer.max_batches_per_epoch=3",
                           f"hydra.run.dir={run_dir}", *overrides], capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)


def test_which_keys_a_resume_may_change():
    base = compose_config(*TINY)
    same = compose_config(*TINY, "trainer.max_epochs=9", "trainer.patience=3", "trainer.resume=true",
                          "trainer.log_every_s=1", "trainer.tensorboard=true", "gpus=2", "launcher.max_restarts=1")
    assert changed_keys(base, same) == []
    other = compose_config(*TINY, "model.params.hidden=16", "dataset.num_nodes=12", "batching.window=6",
                           "trainer.lr=0.1")
    assert [k for k, _, _ in changed_keys(base, other)] == ["batching.window", "dataset.num_nodes",
                                                            "model.params.hidden", "trainer.lr"]


def test_a_resume_that_changes_the_model_or_data_is_refused_before_anything_is_written(tmp_path):
    run_dir = tmp_path / "run"
    assert train(run_dir, "trainer.max_epochs=1").returncode == 0
    before = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*")
              if p.is_file() and ".hydra" not in p.parts and p.suffix != ".log" and p.name != ".run.lock"}
    for change, key in (("model.params.hidden=16", "model.params.hidden (8 -> 16)"),
                        ("dataset.num_nodes=12", "dataset.num_nodes (10 -> 12)")):
        proc = train(run_dir, "trainer.max_epochs=2", "trainer.resume=true", change)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and key in lines[0] and "Traceback" not in proc.stderr, proc.stderr
        after = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*")
                 if p.is_file() and ".hydra" not in p.parts and p.suffix != ".log" and p.name != ".run.lock"}
        assert after == before  # config.yaml, checkpoints, results.json, metrics.csv untouched
    # a harmless change (more epochs, another logging interval) resumes
    proc = train(run_dir, "trainer.max_epochs=2", "trainer.resume=true", "trainer.log_every_s=5")
    assert proc.returncode == 0, proc.stderr
    assert "resumed from" in proc.stdout
    assert [r["epoch"] for r in read_csv(run_dir / "metrics.csv")] == ["1", "2"]


def test_a_failed_resume_leaves_failed_json_and_not_the_last_attempts_results(tmp_path):
    import pytest

    from stgnn_launch.errors import UserError
    from stgnn_launch.report.collect import FAILED, read_run
    from stgnn_launch.config.load import save_run_config
    from stgnn_launch.train.run import run_training

    run_dir = tmp_path / "run"
    cfg = compose_config(*TINY, "trainer.max_epochs=1", "trainer.max_batches_per_epoch=2")
    cfg.run_dir = str(run_dir)
    save_run_config(cfg, run_dir)
    run_training(cfg, run_dir)
    assert (run_dir / "results.json").is_file()
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")  # the resume will fail
    cfg.trainer.resume, cfg.trainer.max_epochs = True, 2
    with pytest.raises(UserError, match="could not read it"):
        run_training(cfg, run_dir)
    assert (run_dir / "failed.json").is_file() and not (run_dir / "results.json").exists()
    assert read_run(run_dir).status == FAILED
