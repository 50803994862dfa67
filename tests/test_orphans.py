"""Ranks die with their launcher (issue 22, point 3): SIGKILL of `stgnn-train gpus=2` or of a Slurm node
task leaves no rank (or torchrun) training on as an orphan."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from helpers import TINY, rank_process_ids


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def wait_until(condition, timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def test_sigkill_of_the_launcher_ends_its_ranks(tmp_path):
    run_dir = tmp_path / "run"
    launcher = subprocess.Popen([sys.executable, "-m", "stgnn_launch.cli.train", *TINY, "gpus=2",
                                 "batching=dist_index", "trainer.max_epochs=1000", "trainer.patience=1000",
                                 f"hydra.run.dir={run_dir}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                stdin=subprocess.DEVNULL)
    ranks: list[int] = []
    try:
        assert wait_until(lambda: len(rank_process_ids(run_dir)) == 2 and (run_dir / "metrics.csv").exists(), 240), \
            "the two ranks never started training"
        ranks = rank_process_ids(run_dir)
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        assert wait_until(lambda: not any(alive(pid) for pid in ranks), 30), \
            f"ranks {[p for p in ranks if alive(p)]} outlived their launcher"
    finally:
        launcher.kill()
        for pid in rank_process_ids(run_dir):  # never leave a rank behind, even when the test fails
            os.kill(pid, signal.SIGKILL)


def test_sigkill_of_a_slurm_node_task_ends_its_torchrun(tmp_path):
    """launch/node_task.py's run_torchrun in a node task that is killed: the 'torchrun' it started dies too."""
    pid_file = tmp_path / "torchrun.pid"
    task = textwrap.dedent(f"""
        import sys
        from stgnn_launch.launch.node_task import run_torchrun
        run_torchrun([sys.executable, "-c", "import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); "
                      "time.sleep(600)"], env=dict(__import__('os').environ))
    """)
    node_task = subprocess.Popen([sys.executable, "-c", task], stdin=subprocess.DEVNULL)
    child = None
    try:
        assert wait_until(lambda: pid_file.is_file() and pid_file.read_text(), 60)
        child = int(pid_file.read_text())
        node_task.send_signal(signal.SIGKILL)
        node_task.wait()
        assert wait_until(lambda: not alive(child), 10), "torchrun outlived its Slurm node task"
    finally:
        node_task.kill()
        if child is not None and alive(child):
            os.kill(child, signal.SIGKILL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_process_whose_parent_already_died_does_not_run_on():
    code = ("import os, sys; from stgnn_launch.lifeline import die_with_parent; "
            "die_with_parent(parent=os.getppid() + 10**7); print('ran on')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL and "ran on" not in proc.stdout
