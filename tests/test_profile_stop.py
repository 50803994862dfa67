"""stgnn-profile stops as stgnn-train does: SIGTERM mid-run ends in one line with exit 143, no traceback,
and a rerun with the same profile.out_dir resumes the stopped run from its checkpoint; the predicted
ranking is printed before the full runs start."""

import os
import signal
import subprocess
import sys
import time

from helpers import REPO, TINY_DATA


def profile_cmd(out_dir):
    return [sys.executable, "-m", "stgnn_launch.cli.profile", *TINY_DATA, "model.params.hidden=4",
            "trainer.max_batches_per_epoch=4", "trainer.max_eval_batches=2", "trainer.patience=100", "models=[tgcn]", "profile.full_epochs=4", "profile.min_epochs=2",
            "profile.epochs_fraction=1", "profile.train_fraction=1", "profile.full=true",
            f"profile.out_dir={out_dir}"]


def test_sigterm_ends_in_one_line_with_143_and_the_rerun_resumes(tmp_path):
    out_dir = tmp_path / "study"
    last = out_dir / "profile" / "tgcn" / "checkpoints" / "last.pt"
    proc = subprocess.Popen(profile_cmd(out_dir), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 120
    while not last.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert last.is_file(), proc.communicate()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, (out, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("stgnn-profile: stopped by SIGTERM") and f"profile.out_dir={out_dir}" in err
    assert not (out_dir / "profile" / "tgcn" / "failed.json").exists()

    again = subprocess.run(profile_cmd(out_dir), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "stgnn-profile: resuming the unfinished run in" in again.stdout
    assert "resumed from" in again.stdout and (out_dir / "profile.json").is_file()
    ranking = again.stdout.index("predicted ranking (before the full runs):")  # known before any full run
    assert ranking < again.stdout.index(f"run dir:    {out_dir / 'full' / 'tgcn'}")


def test_ctrl_c_ends_in_one_line_with_130(tmp_path):
    out_dir = tmp_path / "study"
    last = out_dir / "profile" / "tgcn" / "checkpoints" / "last.pt"
    proc = subprocess.Popen(profile_cmd(out_dir), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not last.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert last.is_file(), proc.communicate()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert err.startswith("stgnn-profile: stopped by SIGINT") and len(err.strip().splitlines()) == 1, err
    assert not (out_dir / "profile" / "tgcn" / "failed.json").exists()  # the rerun resumes it
