"""`launcher=slurm`: submit through submitit, one Slurm task per node, each running torchrun.

gpus=128 with launcher.gpus_per_node=4 gives 32 nodes; every node's task starts torchrun with
--nnodes=32 --nproc_per_node=4 and a c10d rendezvous on the job's first node. On a CPU cluster
(launcher.cpu=true) no GPUs are requested, the ranks are gloo processes, and each node's task asks for
one core per rank unless launcher.cpus_per_task says otherwise.

Time limits and preemption: the job asks Slurm for a signal (submitit's USR2) launcher.signal_delay_s
seconds before its end. submitit catches it in the node task's Python process and calls `checkpoint()`,
which resubmits the same job; submitit then runs `scontrol requeue`. The requeued job runs every rank
with STGNN_RESUME=1, so they continue from the run directory's last epoch checkpoint. torchrun and the
ranks ignore that signal (they are stopped by Slurm's requeue): the rank processes never die half-way
through writing a checkpoint because of it, and checkpoints are written atomically anyway.

`launcher.prepare_only=true` writes the run directory and its config.yaml and submits nothing: that is
how scripts/slurm/train.sbatch prepares a run before it starts torchrun on every node itself.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from stgnn_launch.config.schema import Config
from stgnn_launch.errors import UserError
from stgnn_launch.launch.torchrun import build_torchrun_cmd
from stgnn_launch.train.record import RESULTS

RESUME_ENV = "STGNN_RESUME"
# Slurm job states after which the job will not run again (scontrol/sacct spelling).
FINAL_STATES = frozenset({"COMPLETED", "FAILED", "TIMEOUT", "CANCELLED", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
                          "DEADLINE", "OUT_OF_MEMORY", "REVOKED", "SPECIAL_EXIT"})
STATE_POLL_S = 10.0  # how often `follow` asks Slurm (sacct, or scontrol without accounting) for the state
MAX_TIMEOUT_REQUEUES = 10  # submitit requeues a job that reached its time limit at most this often
TORCHRUN_GRACE_S = 30.0  # after SIGTERM, how long torchrun may take to stop its ranks before SIGKILL


def rdzv_port(configured: int, job_id: str | int) -> int:
    """The rendezvous port: launcher.rdzv_port, or with 0 one derived from the job id (15000-24999), so
    that jobs sharing a node do not try to open the same port."""
    if configured:
        return configured
    digits = "".join(ch for ch in str(job_id) if ch.isdigit()) or "0"
    return 15000 + int(digits) % 10000


class TorchrunJob:
    """What each node's Slurm task runs (pickled by submitit): torchrun over this node's ranks."""

    def __init__(self, run_dir: str, nproc_per_node: int, rdzv_port: int, max_restarts: int) -> None:
        self.run_dir = run_dir
        self.nproc_per_node = nproc_per_node
        self.rdzv_port = rdzv_port  # 0: derived from the job id
        self.max_restarts = max_restarts
        self.requeued = False

    def command(self, nnodes: int, head: str, job_id: str) -> list[str]:
        if self.rdzv_port or job_id.isdigit():
            endpoint = f"{head}:{rdzv_port(self.rdzv_port, job_id)}"
        else:  # the dry run, before there is a job id
            endpoint = f"{head}:$((15000+SLURM_JOB_ID%10000))"
        return build_torchrun_cmd(nnodes=nnodes, nproc_per_node=self.nproc_per_node, run_dir=self.run_dir,
                                  rdzv_endpoint=endpoint, rdzv_id=job_id, max_restarts=self.max_restarts)

    def __call__(self) -> dict[str, Any]:
        import submitit

        env = submitit.JobEnvironment()
        job_id = os.environ.get("SLURM_JOB_ID", str(env.job_id))  # unique, also for an array task
        cmd = self.command(env.num_nodes, env.hostnames[0], job_id)
        child_env = dict(os.environ)
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
        if self.requeued or restarts > 0:
            child_env[RESUME_ENV] = "1"
            print(f"requeued (restart {restarts}): the ranks resume from {self.run_dir}/checkpoints/last.pt",
                  flush=True)
        print(" ".join(shlex.quote(c) for c in cmd), flush=True)
        code = run_torchrun(cmd, child_env, ignore=_preemption_signal())
        if code != 0:
            raise RuntimeError(f"torchrun exited with status {code} on {env.hostname}; the ranks' errors are above "
                               "in this log")
        results = Path(self.run_dir) / RESULTS
        return {"run_dir": self.run_dir, "results": str(results) if results.is_file() else None}

    def checkpoint(self, *args: Any, **kwargs: Any):
        """Time limit or preemption: requeue; the ranks resume from the last epoch checkpoint."""
        import submitit

        self.requeued = True
        return submitit.helpers.DelayedSubmission(self)


def _preemption_signal() -> signal.Signals:
    from submitit.slurm.slurm import SlurmJobEnvironment

    return getattr(signal, "SIG" + SlurmJobEnvironment.USR_SIG)


def run_torchrun(cmd: list[str], env: dict[str, str], ignore: signal.Signals | None = None) -> int:
    """Run torchrun to its end and return its status; never leave it or its ranks behind.

    `ignore` (submitit's preemption signal) is ignored by torchrun and, inherited, by the ranks: only
    this process acts on it. Should this process be stopped early (submitit exits after requeueing),
    torchrun gets SIGTERM, which it passes on to the ranks, and SIGKILL after TORCHRUN_GRACE_S.
    """

    def child_setup() -> None:
        if ignore is not None:
            signal.signal(ignore, signal.SIG_IGN)

    proc = subprocess.Popen(cmd, env=env, preexec_fn=child_setup)
    try:
        return proc.wait()
    finally:
        if proc.poll() is None:
            ranks = _descendants(proc.pid)
            proc.terminate()
            try:
                proc.wait(timeout=TORCHRUN_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
            for pid, started in ranks.items():  # ranks run in sessions of their own: stop any left behind
                if _processes().get(pid, (None, None))[1] == started:  # (and not a new process with its pid)
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, start time) of every process, from /proc (empty where there is none)."""
    found = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            found[int(entry.name)] = (int(fields[1]), fields[19])
        except (OSError, ValueError, IndexError):
            continue
    return found


def _descendants(pid: int) -> dict[int, str]:
    """pid -> start time of every process below `pid`."""
    processes = _processes()
    children: dict[int, list[int]] = {}
    for child, (parent, _) in processes.items():
        children.setdefault(parent, []).append(child)
    found, todo = {}, [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found[child] = processes[child][1]
            todo.append(child)
    return found


def cpus_per_task(cfg: Config) -> int | None:
    """Cores for each node's task: launcher.cpus_per_task, or one per rank on a CPU cluster (Slurm would
    otherwise give the single task one core for all its ranks); None leaves it to the site on GPUs."""
    launcher = cfg.launcher
    if launcher.cpus_per_task is not None:
        return launcher.cpus_per_task
    return launcher.gpus_per_node if launcher.cpu else None


def slurm_parameters(cfg: Config) -> dict[str, Any]:
    """submitit SlurmExecutor parameters (sbatch options) for this config."""
    launcher = cfg.launcher
    nodes = cfg.gpus // launcher.gpus_per_node
    params: dict[str, Any] = {
        "job_name": f"stgnn-{cfg.model.name}-{cfg.batching.mode}",
        "nodes": nodes,
        "ntasks_per_node": 1,  # torchrun starts the node's ranks itself
        "time": launcher.time_min,
        "signal_delay_s": launcher.signal_delay_s,
        "setup": list(launcher.setup),
        "additional_parameters": dict(launcher.sbatch_extra),
    }
    if not launcher.cpu:
        params["gpus_per_node"] = launcher.gpus_per_node
    optional = {"partition": launcher.partition, "account": launcher.account, "qos": launcher.qos,
                "constraint": launcher.constraint, "cpus_per_task": cpus_per_task(cfg),
                "mem": f"{launcher.mem_gb}GB" if launcher.mem_gb else None}
    params.update({k: v for k, v in optional.items() if v is not None})
    if "cpus_per_task" in params:  # srun does not take it from the allocation since Slurm 22.05
        params["srun_args"] = [f"--cpus-per-task={params['cpus_per_task']}"]
    return params


def job_for(cfg: Config, run_dir: Path) -> TorchrunJob:
    return TorchrunJob(str(run_dir.resolve()), cfg.launcher.gpus_per_node, cfg.launcher.rdzv_port,
                       cfg.launcher.max_restarts)


def dry_run(cfg: Config, run_dir: Path) -> int:
    """Print the batch script submitit would submit and the torchrun line each node runs."""
    from submitit.slurm.slurm import _make_sbatch_string

    params = slurm_parameters(cfg)
    folder = str(run_dir.resolve() / "slurm" / "%j")  # as submit() hands it to submitit
    script = _make_sbatch_string(command=f"{shlex.quote(sys.executable)} -u -m submitit.core._submit {folder}",
                                 folder=folder, **params)
    torchrun = job_for(cfg, run_dir).command(params["nodes"], "$FIRST_NODE", "$SLURM_JOB_ID")
    print(f"dry run: {params['nodes']} nodes x {cfg.launcher.gpus_per_node} ranks = {cfg.gpus} ranks; "
          "nothing submitted")
    print("---- batch script ----")
    print(script)
    print("---- torchrun, one per node ($FIRST_NODE = first host of $SLURM_JOB_NODELIST) ----")
    print(" ".join(shlex.quote(c) if not c.startswith("--rdzv") else c for c in torchrun))
    return 0


def submit(cfg: Config, run_dir: Path) -> int:
    """Submit the run (its config.yaml is written already), print where it goes, follow it if asked."""
    if cfg.launcher.prepare_only:
        print(f"prepared run directory {run_dir.resolve()} (config.yaml); nothing submitted", flush=True)
        return 0
    import submitit

    try:
        executor = submitit.SlurmExecutor(folder=str(run_dir.resolve() / "slurm" / "%j"),
                                          max_num_timeout=MAX_TIMEOUT_REQUEUES)
    except RuntimeError as err:
        raise UserError(f"launcher=slurm: expected a Slurm cluster (srun on PATH), found none ({err})") from None
    executor.update_parameters(**slurm_parameters(cfg))
    try:
        job = executor.submit(job_for(cfg, run_dir))
    except (submitit.core.utils.FailedJobError, subprocess.CalledProcessError) as err:  # sbatch said no
        lines = [line for line in str(err).splitlines() if line.strip()]
        raise UserError(f"launcher=slurm: sbatch refused the job: {lines[-1] if lines else err}") from None
    first = job.task(0)
    nodes = cfg.gpus // cfg.launcher.gpus_per_node
    print(f"submitted Slurm job {job.job_id}: {nodes} nodes x {cfg.launcher.gpus_per_node} ranks", flush=True)
    print(f"  logs:    {first.paths.stdout}\n           {first.paths.stderr}", flush=True)
    print(f"  run dir: {run_dir.resolve()}", flush=True)
    if not cfg.launcher.wait:
        return 0
    return follow(job, run_dir)


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


def follow(job, run_dir: Path, poll_s: float = 2.0) -> int:
    """Wait for the job (requeues included), print its state changes and its result.

    submitit learns states from sacct; where the cluster has no accounting, slurmctld's own view
    (scontrol) tells when a job that Slurm ended (cancelled, out of time) will never write a result.
    """
    last_state, last_check, ended_at, requeues = None, 0.0, None, 0
    gave_up = False
    try:
        while not job.done():
            now = time.monotonic()
            if now - last_check >= STATE_POLL_S:
                last_check = now
                state, restarts = _state(job)
                if restarts > requeues:
                    requeues = restarts
                    print(f"Slurm job {job.job_id}: requeued (time limit or preemption; restart {restarts}); "
                          "the ranks resume from the last checkpoint", flush=True)
                if state != last_state:
                    print(f"Slurm job {job.job_id}: {state}", flush=True)
                    last_state = state
                if state.split()[0].rstrip("+") in FINAL_STATES:
                    ended_at = ended_at or now
                    if now - ended_at > 3 * STATE_POLL_S:  # ended, and still no result: it will not come
                        gave_up = True
                        break
                else:
                    ended_at = None
            time.sleep(poll_s)
    except KeyboardInterrupt:
        print(f"\nstopped following; Slurm job {job.job_id} goes on (scancel {job.job_id} stops it)")
        return 130
    stdout, stderr = job.task(0).paths.stdout, job.task(0).paths.stderr
    if gave_up:
        print(f"Slurm job {job.job_id} ended in state {last_state} without a result (Slurm stopped it)")
        print(f"  logs: {stdout}\n        {stderr}")
        return 1
    try:
        job.results() if job.num_tasks > 1 else job.result()
    except Exception as err:  # the job's own traceback is in its log
        text = str(err).strip()
        print(f"Slurm job {job.job_id} ended in state {last_state or job.state} without success: "
              f"{text.splitlines()[-1] if text else type(err).__name__}")
        print(f"  logs: {stdout}\n        {stderr}")
        return 1
    results = run_dir / RESULTS
    print(f"Slurm job {job.job_id} finished; results: {results}", flush=True)
    if results.is_file():
        from stgnn_launch.train.record import read_results
        from stgnn_launch.train.run import format_test

        print(format_test(read_results(run_dir)["test"]), flush=True)
    return 0
