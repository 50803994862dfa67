"""Load on the local one-node Slurm cluster: 20 short `stgnn-train launcher=slurm` jobs submitted at once
all finish, each with its own valid results.json (nothing overwritten); and a GPU request on the cluster's
GPU-less node is refused before sbatch with the key to set.

The node runs as many jobs at once as it has cores (one core per CPU rank), so 20 jobs of a few seconds of
training each take a few minutes in all.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import TINY_DATA

try:  # tests/ on sys.path (conftest.py puts it there)
    from slurm_cluster import slurm_cluster, wait_for_job, workdir  # noqa: F401
except ImportError:  # tests/ as a package
    from tests.slurm_cluster import slurm_cluster, wait_for_job, workdir  # noqa: F401

JOBS = 20
SUBMITTERS = 5  # stgnn-train processes submitting at the same time (each imports torch: ~2 s of CPU)
MINIMAL = (*TINY_DATA, "model=persistence", "trainer.max_epochs=1", "trainer.max_batches_per_epoch=2",
           "launcher=slurm", "launcher.cpu=true", "gpus=1", "launcher.gpus_per_node=1", "launcher.time_min=10")


def submit_cmd(cluster, run_dir: Path, seed: int) -> list[str]:
    return [sys.executable, "-m", "stgnn_launch.cli.train", *MINIMAL, f"launcher.partition={cluster.partition}",
            f"trainer.seed={seed}", f"hydra.run.dir={run_dir}"]



@pytest.mark.slurm
def test_twenty_jobs_at_once_all_finish_with_their_own_results(slurm_cluster, workdir):
    env = slurm_cluster.env()
    run_dirs = [workdir / f"run{i:02d}" for i in range(JOBS)]
    job_ids: dict[int, str] = {}
    for first in range(0, JOBS, SUBMITTERS):
        batch = {i: subprocess.Popen(submit_cmd(slurm_cluster, run_dirs[i], i), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, cwd=workdir, env=env)
                 for i in range(first, min(JOBS, first + SUBMITTERS))}
        for i, proc in batch.items():
            out, _ = proc.communicate(timeout=180)
            assert proc.returncode == 0, out
            match = re.search(r"submitted Slurm job (\d+)", out)
            assert match, out
            job_ids[i] = match.group(1)
    assert len(set(job_ids.values())) == JOBS

    deadline = time.monotonic() + 900
    states = {i: wait_for_job(job, timeout=max(1.0, deadline - time.monotonic()), poll_s=2, env=env)
              for i, job in job_ids.items()}
    failed = {i: s for i, s in states.items() if s != "COMPLETED"}
    assert not failed, {i: (s, _log_tail(run_dirs[i], job_ids[i])) for i, s in failed.items()}

    for i, run_dir in enumerate(run_dirs):
        text = (run_dir / "results.json").read_text()
        record = json.loads(text, parse_constant=lambda name: pytest.fail(f"{run_dir}: results.json holds {name}"))
        # its own run: the directory and the seed it was given (nothing written over by a neighbour)
        assert record["config"]["run_dir"] == str(run_dir) and record["config"]["trainer"]["seed"] == i, record["config"]
        assert record["model"] == "persistence" and record["world_size"] == 1
        assert math.isfinite(record["test"]["avg"]["mae"]) and isinstance(record["wall_time_s"], float)
        assert not (run_dir / "failed.json").exists()
        assert [p.name for p in (run_dir / "slurm").iterdir() if p.is_dir()] == [job_ids[i]]  # one job per run


@pytest.mark.slurm
def test_gpu_request_on_a_node_without_gpus_names_launcher_cpu(slurm_cluster, workdir):
    """The local node has no GPUs (no gres): sbatch would answer 'Invalid generic resource (gres)
    specification'; the launcher asks sinfo first and names the key."""
    run_dir = workdir / "run"
    cmd = [sys.executable, "-m", "stgnn_launch.cli.train", *TINY_DATA, "launcher=slurm", "gpus=1",
           "launcher.gpus_per_node=1", f"launcher.partition={slurm_cluster.partition}", f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=workdir, env=slurm_cluster.env())
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert re.fullmatch(rf"stgnn-train: error: launcher\.cpu: expected true on partition {slurm_cluster.partition}, "
                        r"whose nodes have no GPUs \(sinfo gres: \(null\)\), found None: .*", proc.stderr.strip())
    assert "Traceback" not in proc.stderr and "submitted" not in proc.stdout
    assert not run_dir.exists()


def _log_tail(run_dir: Path, job_id: str) -> str:
    logs = sorted((run_dir / "slurm" / job_id).glob("*_log.*")) if (run_dir / "slurm" / job_id).is_dir() else []
    return "\n".join(p.read_text()[-1500:] for p in logs) or "<no logs>"
