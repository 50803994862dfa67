"""A full disk is one line (issue 22, point 7): at checkpoint time and while converting a CSV into the cache,
exit non-zero with the path and the space needed, earlier checkpoints intact, no crash, no traceback."""

import json
import os
import subprocess
import sys
import uuid

import numpy as np
import pytest

from helpers import TINY
from stgnn_launch.train import checkpoint


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of a few MiB mounted for the test (root needed; skipped with the reason elsewhere)."""
    mount = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip() or proc.returncode}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(disk, leave_bytes):
    """Fill the file system but for about `leave_bytes`."""
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    with open(disk / "filler", "ab") as handle:
        handle.write(b"\0" * max(0, free - leave_bytes))


def train(run_dir, *overrides):
    return subprocess.run([sys.executable, "-m", "stgnn_launch.cli.train", *TINY, "model.params.hidden=96",
                           "trainer.max_batches_per_epoch=2", "trainer.patience=50", f"hydra.run.dir={run_dir}",
                           *overrides], capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)


def test_a_full_disk_at_checkpoint_time_is_one_line_and_keeps_the_earlier_checkpoint(small_disk):
    run_dir = small_disk / "run"
    first = train(run_dir, "trainer.max_epochs=1")
    assert first.returncode == 0, first.stderr
    size = (run_dir / "checkpoints" / "last.pt").stat().st_size
    fill(small_disk, size // 3)  # room for the logs and failed.json, not for another checkpoint
    proc = train(run_dir, "trainer.max_epochs=3", "trainer.resume=true")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "last.pt: expected about" in lines[0] and "MiB free" in lines[0], lines[0]
    assert checkpoint.load(run_dir / "checkpoints" / "last.pt")["epoch"] == 1  # the earlier checkpoint, whole
    failed = json.loads((run_dir / "failed.json").read_text())
    assert failed["type"] == "DiskFull"
    assert not (run_dir / "results.json").exists()  # the first attempt's results no longer describe the run
    assert not list(run_dir.rglob("*.tmp"))


def test_converting_into_a_full_cache_is_one_line_not_a_crash(small_disk, tmp_path):
    steps, sensors = 3000, 200  # 2.4 MB of float32 readings: more than the 1 MiB left
    csv = tmp_path / "speeds.csv"
    rng = np.random.default_rng(0)
    with csv.open("w") as handle:
        handle.write(",".join(f"s{i}" for i in range(sensors)) + "\n")
        np.savetxt(handle, rng.uniform(40, 70, (steps, sensors)), fmt="%.1f", delimiter=",")
    fill(small_disk, 2**20)
    out = small_disk / "cache" / "speeds.h5"
    proc = subprocess.run([sys.executable, "-m", "stgnn_launch.cli.data", "convert", str(csv), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode not in (0, 139, -11), proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert str(out) in lines[0] and "MiB free" in lines[0], lines[0]
    assert not out.exists() and not list(small_disk.rglob("*.tmp"))
