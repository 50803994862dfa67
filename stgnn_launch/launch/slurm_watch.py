"""Watching a submitted Slurm job: its state (sacct through submitit, else slurmctld's own view), its requeues,
and the end that will never write a result (cancelled, out of time)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from stgnn_launch.train.record import RESULTS

# Slurm job states after which the job will not run again (scontrol/sacct spelling).
FINAL_STATES = frozenset({"COMPLETED", "FAILED", "TIMEOUT", "CANCELLED", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
                          "DEADLINE", "OUT_OF_MEMORY", "REVOKED", "SPECIAL_EXIT"})
STATE_POLL_S = 10.0  # how often `follow` asks Slurm (sacct, or scontrol without accounting) for the state


def controller_view(job_id: str) -> dict[str, str]:
    """The job as slurmctld has it (JobState, Reason, Restarts, ...); empty once it has forgotten it."""
    try:
        proc = subprocess.run(["scontrol", "-o", "show", "job", str(job_id)], capture_output=True, text=True,
                              timeout=60, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    lines = proc.stdout.strip().splitlines()
    return dict(word.split("=", 1) for word in lines[0].split() if "=" in word) if lines else {}


def _state(job) -> tuple[str, int]:
    """(state, restarts): sacct's state through submitit where there is accounting, else slurmctld's,
    with the reason a pending job waits (one the cluster can never run says so: PartitionConfig, ...);
    and how often the job was requeued, from slurmctld (0 once it has forgotten the job)."""
    state = job.watcher.get_state(job.job_id, mode="force")
    view = controller_view(job.job_id)
    if state == "UNKNOWN":
        state = view.get("JobState", "UNKNOWN")
    if state == "PENDING" and view.get("Reason") not in (None, "None", "(null)"):
        state = f"PENDING ({view['Reason']})"
    restarts = view.get("Restarts", "0")
    return state, int(restarts) if restarts.isdigit() else 0


class JobWatch:
    """One job as `follow` sees it: prints its state changes and requeues, and notices when Slurm ended it
    (cancelled, out of time) so that it will never write a result.

    submitit learns states from sacct; where the cluster has no accounting, slurmctld's own view
    (scontrol) tells when a job that Slurm ended will never write a result.
    """

    def __init__(self, job, label: str = "") -> None:
        self.job = job
        self.name = f"Slurm job {job.job_id}{label}"
        self.state: str | None = None
        self.requeues = 0
        self.ended_at: float | None = None
        self.gave_up = False  # ended, and still no result after a while: it will not come

    def poll(self, now: float) -> None:
        state, restarts = _state(self.job)
        if restarts > self.requeues:
            self.requeues = restarts
            print(f"{self.name}: requeued (time limit or preemption; restart {restarts}); "
                  "the ranks resume from the last checkpoint", flush=True)
        if state != self.state:
            print(f"{self.name}: {state}", flush=True)
            self.state = state
        if state.split()[0].rstrip("+") in FINAL_STATES:
            self.ended_at = self.ended_at or now
            self.gave_up = now - self.ended_at > 3 * STATE_POLL_S
        else:
            self.ended_at = None

    def over(self) -> bool:
        return self.gave_up or self.job.done()

    def failure(self) -> str | None:
        """None once the job succeeded, else why not (one line, after "Slurm job ID")."""
        if self.gave_up:
            return f"ended in state {self.state} without a result (Slurm stopped it)"
        try:
            self.job.results() if self.job.num_tasks > 1 else self.job.result()
        except Exception as err:  # the job's own traceback is in its log
            text = str(err).strip()
            return (f"ended in state {self.state or self.job.state} without success: "
                    f"{text.splitlines()[-1] if text else type(err).__name__}")
        return None


def watch_until_over(watches: list[JobWatch], poll_s: float = 2.0) -> None:
    """Block until every job has ended (requeues included), asking Slurm every STATE_POLL_S."""
    last_check = 0.0
    while not all(watch.over() for watch in watches):
        now = time.monotonic()
        if now - last_check >= STATE_POLL_S:
            last_check = now
            for watch in watches:
                if not watch.over():
                    watch.poll(now)
        time.sleep(poll_s)


def follow(job, run_dir: Path, poll_s: float = 2.0) -> int:
    """Wait for the job (requeues included), print its state changes and its result."""
    watch = JobWatch(job)
    try:
        watch_until_over([watch], poll_s)
    except KeyboardInterrupt:
        print(f"\nstopped following; Slurm job {job.job_id} goes on (scancel {job.job_id} stops it)")
        return 130
    why = watch.failure()
    if why:
        print(f"Slurm job {job.job_id} {why}")
        print(f"  logs: {job.task(0).paths.stdout}\n        {job.task(0).paths.stderr}")
        return 1
    results = run_dir / RESULTS
    print(f"Slurm job {job.job_id} finished; results: {results}", flush=True)
    if results.is_file():
        from stgnn_launch.train.record import read_results
        from stgnn_launch.train.run import format_test

        print(format_test(read_results(run_dir).test or {}), flush=True)
    return 0
