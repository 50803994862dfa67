"""End-to-end checks of the local one-node Slurm cluster (scripts/slurm/local-cluster.sh).

These submit real jobs: `sbatch`, `srun`, and submitit's SlurmExecutor. The fixture starts the
cluster with accounting (slurmdbd), so `sacct` works and submitit sees the states Slurm gives
jobs; with STGNN_SLURM_ACCOUNTING=0 (or a cluster started without it) job states come from
`scontrol show job` only, and submitit cannot see Slurm-side failures (see
test_submitit_and_slurm_side_failure, which checks whichever case it finds).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import submitit

# The fixture lives in tests/slurm_cluster.py (tests/conftest.py may re-export it too).
try:  # tests/ on sys.path (conftest.py puts it there; so does pytest's rootdir import mode)
    from slurm_cluster import FINAL_STATES, job_state, slurm_cluster, submit, wait_for_job  # noqa: F401
except ImportError:  # tests/ as a package
    from tests.slurm_cluster import FINAL_STATES, job_state, slurm_cluster, submit, wait_for_job  # noqa: F401

pytestmark = pytest.mark.slurm


def test_cluster_is_up(slurm_cluster):
    assert slurm_cluster.conf.exists()
    assert os.environ["SLURM_CONF"] == str(slurm_cluster.conf)
    out = subprocess.run(
        ["sinfo", "-h", "-p", slurm_cluster.partition, "-o", "%a %T"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout.split()
    assert out[0] == "up" and out[1] in {"idle", "mixed", "allocated", "completing"}, out


def test_srun_two_tasks(slurm_cluster, tmp_path):
    proc = subprocess.run(
        ["srun", "-N1", "-n2", "-p", slurm_cluster.partition, "-t", "2", "hostname"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split()
    assert len(lines) == 2, proc.stdout
    if slurm_cluster.node:
        assert set(lines) == {slurm_cluster.node}


def test_sbatch_two_tasks(slurm_cluster, tmp_path):
    out = tmp_path / "hostname.out"
    job_id = submit(
        [
            "--ntasks=2",
            f"--partition={slurm_cluster.partition}",
            "--time=2",
            f"--chdir={tmp_path}",
            f"--output={out}",
            "--job-name=stgnn-test-sbatch",
            "--wrap",
            "srun hostname",
        ]
    )
    state = wait_for_job(job_id, timeout=120)
    text = out.read_text() if out.exists() else "<no output file>"
    assert state == "COMPLETED", text
    lines = text.split()
    assert len(lines) == 2, text
    assert len(set(lines)) == 1


# The job's Python cannot import this test module (pytest put tests/ on sys.path, the job
# did not), so submitit's cloudpickle must ship these functions by value, not by name.
try:
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
except (ImportError, AttributeError):  # pragma: no cover - cloudpickle < 2.0
    pass


def _answer() -> tuple:
    return 6 * 7, os.environ.get("SLURM_JOB_ID"), int(os.environ.get("SLURM_NTASKS", "0"))


def _boom() -> None:
    raise ValueError("boom from a Slurm job")


def _wait_submitit(job, timeout: float = 180.0) -> None:
    """Wait with submitit's own `job.done()`, but never hang.

    Without sacct, submitit's watcher cannot see Slurm states (they stay UNKNOWN) and
    `job.done()` only turns true once the result pickle exists. A job that Slurm kills
    before it writes one would make `job.result()` wait forever, so check scontrol too.
    """
    deadline = time.monotonic() + timeout
    while not job.done():
        state = job_state(job.job_id)
        if state in FINAL_STATES and state != "COMPLETED":
            time.sleep(5)  # let the result pickle land if the job wrote one
            if job.done():
                return
            pytest.fail(f"submitit job {job.job_id} ended as {state} without a result\n{job.stderr()}")
        if time.monotonic() > deadline:
            pytest.fail(f"submitit job {job.job_id} not done after {timeout:.0f}s (slurm state {state})")
        time.sleep(1)


def test_submitit_result(slurm_cluster, tmp_path):
    executor = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="slurm")
    executor.update_parameters(
        slurm_partition=slurm_cluster.partition, timeout_min=5, nodes=1, tasks_per_node=1, cpus_per_task=1,
        name="stgnn-test-submitit",
    )
    job = executor.submit(_answer)
    _wait_submitit(job)
    answer, job_id, ntasks = job.result()
    assert answer == 42
    assert job_id == job.job_id
    assert ntasks == 1
    assert wait_for_job(job.job_id, timeout=60) == "COMPLETED"
    # Without sacct submitit's own view of the state stays UNKNOWN. With it, slurmdbd records the
    # end a moment after slurmctld knows it (sacct may still say RUNNING), so poll, bounded.
    if not slurm_cluster.accounting:
        assert job.get_info(mode="force").get("State", "UNKNOWN") == "UNKNOWN"
        return
    deadline = time.monotonic() + 120
    while (state := job.get_info(mode="force").get("State", "UNKNOWN")) not in FINAL_STATES:
        assert time.monotonic() < deadline, f"sacct still says {state} for job {job.job_id} after 120 s"
        time.sleep(2)
    assert state == "COMPLETED"


def test_submitit_exception(slurm_cluster, tmp_path):
    executor = submitit.SlurmExecutor(folder=tmp_path / "submitit")
    executor.update_parameters(partition=slurm_cluster.partition, time=5, ntasks_per_node=1, job_name="stgnn-boom")
    job = executor.submit(_boom)
    _wait_submitit(job)
    with pytest.raises(submitit.core.utils.FailedJobError, match="boom from a Slurm job"):
        job.result()
    # submitit exits non-zero after pickling the traceback.
    assert wait_for_job(job.job_id, timeout=60) == "FAILED"


def test_submitit_and_slurm_side_failure(slurm_cluster, tmp_path):
    """A job Slurm kills before it writes a result (here: scancel).

    submitit's only source of job states is sacct. With accounting it reports CANCELLED and
    `job.result()` raises. Without it (the default here) the state stays UNKNOWN, `job.done()`
    stays False and `job.result()` would wait forever: callers must watch squeue/scontrol
    themselves (as `_wait_submitit` does). This pins down both behaviours.
    """
    executor = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="slurm")
    executor.update_parameters(slurm_partition=slurm_cluster.partition, timeout_min=5, name="stgnn-cancelled")
    job = executor.submit(time.sleep, 600)
    deadline = time.monotonic() + 60
    while job_state(job.job_id) != "RUNNING":
        assert time.monotonic() < deadline, f"job {job.job_id} did not start"
        time.sleep(0.5)
    subprocess.run(["scancel", job.job_id], check=True, timeout=30)
    assert wait_for_job(job.job_id, timeout=60) == "CANCELLED"
    if not slurm_cluster.accounting:
        time.sleep(3)
        assert not job.done(force_check=True)
        assert job.get_info(mode="force").get("State", "UNKNOWN") == "UNKNOWN"
        return
    deadline = time.monotonic() + 120
    while not job.done(force_check=True):
        assert time.monotonic() < deadline, f"submitit still thinks job {job.job_id} runs: {job.state}"
        time.sleep(2)
    assert job.state.startswith("CANCELLED")
    with pytest.raises(submitit.core.utils.UncompletedJobError):
        job.result()


@pytest.mark.slow
def test_time_limit_gives_timeout(slurm_cluster, tmp_path):
    """A 1-minute limit on a job that sleeps longer ends in TIMEOUT.

    Slurm enforces limits on a ~30 s sweep, so this takes 60-100 s.
    """
    out = tmp_path / "sleep.out"
    started = time.monotonic()
    job_id = submit(
        [
            f"--partition={slurm_cluster.partition}",
            "--time=1",
            f"--chdir={tmp_path}",
            f"--output={out}",
            "--job-name=stgnn-test-timeout",
            "--wrap",
            "echo started; sleep 600; echo not reached",
        ]
    )
    state = wait_for_job(job_id, timeout=150, poll_s=2)
    elapsed = time.monotonic() - started
    assert state == "TIMEOUT", out.read_text() if out.exists() else ""
    assert 55 <= elapsed <= 150, elapsed
    text = out.read_text()
    assert "started" in text and "not reached" not in text
