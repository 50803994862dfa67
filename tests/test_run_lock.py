"""One run per run directory (issue 22, point 2): a second run into a held directory is refused in one
line naming the holder; the kernel's release of a dead holder's lock lets the next run in."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from helpers import TINY, read_csv
from stgnn_launch import run_lock


def train_cmd(run_dir, *overrides):
    return [sys.executable, "-m", "stgnn_launch.cli.train", *TINY, f"hydra.run.dir={run_dir}", *overrides]


def wait_for_holder(run_dir, pid, timeout=120):
    lock = run_dir / run_lock.LOCK_FILE
    deadline = time.time() + timeout
    while time.time() < deadline:
        if lock.is_file() and lock.read_text().startswith(f"{pid} "):
            return
        time.sleep(0.1)
    pytest.fail(f"{lock} never named pid {pid}")


def test_a_second_run_into_a_held_directory_is_refused_and_a_killed_holder_releases_it(tmp_path):
    run_dir = tmp_path / "run"
    first = subprocess.Popen(train_cmd(run_dir, "trainer.max_epochs=1000", "trainer.patience=1000"),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        wait_for_holder(run_dir, first.pid)
        while not (run_dir / "config.yaml").is_file():
            time.sleep(0.1)
        config_before = (run_dir / "config.yaml").read_text()
        hydra_before = (run_dir / ".hydra" / "overrides.yaml").read_text()
        second = subprocess.run(train_cmd(run_dir, "trainer.max_epochs=1", "trainer.lr=0.5"),
                                capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
        assert second.returncode == 2
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"pid {first.pid} on host {socket.gethostname()}" in lines[0], second.stderr
        assert str(run_dir) in lines[0] and "Traceback" not in second.stderr
        assert first.poll() is None  # the holder goes on, its directory and config untouched
        assert (run_dir / "config.yaml").read_text() == config_before
        assert (run_dir / ".hydra" / "overrides.yaml").read_text() == hydra_before  # Hydra's files too
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # SIGKILL: the lock file stays, the kernel's lock does not; a killed write's temporaries are cleared
    stale = run_dir / "checkpoints" / f".last.pt.{first.pid}.tmp"
    stale.parent.mkdir(exist_ok=True)
    stale.write_bytes(b"half")
    third = subprocess.run(train_cmd(run_dir, "trainer.max_epochs=1"), capture_output=True, text=True,
                           timeout=300, stdin=subprocess.DEVNULL)
    assert third.returncode == 0, third.stderr
    assert [r["epoch"] for r in read_csv(run_dir / "metrics.csv")] == ["1"]
    assert not stale.exists()


def test_the_lock_is_the_processes_not_the_files(tmp_path):
    """Held in this process: a child is refused (pid and host named); released: the child takes it."""
    code = ("import sys; from pathlib import Path; from stgnn_launch import run_lock\n"
            "try:\n run_lock.hold(Path(sys.argv[1]))\nexcept run_lock.RunDirBusy as e:\n print(e); sys.exit(2)")
    assert run_lock.hold(tmp_path) and not run_lock.hold(tmp_path)  # taken once per process
    env = {k: v for k, v in os.environ.items() if k != run_lock.HELD_ENV}
    busy = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, env=env)
    assert busy.returncode == 2 and f"pid {os.getpid()} on host" in busy.stdout
    launched = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                              env={**env, **run_lock.child_env(tmp_path)})
    assert launched.returncode == 0  # a rank of the holder's own torchrun
    run_lock.release(tmp_path)
    assert run_lock.child_env(tmp_path) == {}  # not held here: a launcher's ranks must take it themselves
    free = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, env=env)
    assert free.returncode == 0, free.stdout
