"""`launcher=slurm`: submit through submitit, one Slurm task per node, each running torchrun.

gpus=128 with launcher.gpus_per_node=4 gives 32 nodes; every node's task starts torchrun with
--nnodes=32 --nproc_per_node=4 and a c10d rendezvous on the job's first node. On a CPU cluster
(launcher.cpu=true) no GPUs are requested, the ranks are gloo processes, and each node's task asks for
one core per rank unless launcher.cpus_per_task says otherwise.

Time limits and preemption: the job asks Slurm for a signal (submitit's USR2) launcher.signal_delay_s
seconds before its end. submitit catches it in the node task's Python process and calls `checkpoint()`,
which sends SIGUSR1 to the node's ranks: at the next step boundary they vote, rank 0 writes a step
checkpoint (position in the epoch, every rank's random state) and they exit; then the same job is
resubmitted and submitit runs `scontrol requeue`. The requeued job runs every rank with STGNN_RESUME=1,
so they continue from that step. torchrun and the ranks ignore USR2 itself: only this process acts on it.

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
from stgnn_launch.launch.torchrun import AGENT_MODULE, build_torchrun_cmd, socket_env
from stgnn_launch.lifeline import die_with_parent
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

    def __init__(self, run_dir: str, nproc_per_node: int, rdzv_port: int, max_restarts: int, *,
                 local_addr: str | None = None, rdzv_conf: str | None = None,
                 socket_ifname: str | None = None) -> None:
        self.run_dir = run_dir
        self.nproc_per_node = nproc_per_node
        self.rdzv_port = rdzv_port  # 0: derived from the job id
        self.max_restarts = max_restarts
        self.local_addr, self.rdzv_conf, self.socket_ifname = local_addr, rdzv_conf, socket_ifname
        self.requeued = False

    def command(self, nnodes: int, head: str, job_id: str, local_addr: str | None = None) -> list[str]:
        if self.rdzv_port or job_id.isdigit():
            endpoint = f"{head}:{rdzv_port(self.rdzv_port, job_id)}"
        else:  # the dry run, before there is a job id
            endpoint = f"{head}:$((15000+SLURM_JOB_ID%10000))"
        # torchrun through stgnn_launch.launch.agent: a failed rank is named (rank, host) in failed.json
        return build_torchrun_cmd(nnodes=nnodes, nproc_per_node=self.nproc_per_node, run_dir=self.run_dir,
                                  rdzv_endpoint=endpoint, rdzv_id=job_id, max_restarts=self.max_restarts,
                                  local_addr=local_addr or self.local_addr, rdzv_conf=self.rdzv_conf,
                                  launcher_module=AGENT_MODULE)

    def __call__(self) -> dict[str, Any]:
        import submitit

        from stgnn_launch.launch.local import interface_address

        env = submitit.JobEnvironment()
        job_id = os.environ.get("SLURM_JOB_ID", str(env.job_id))  # unique, also for an array task
        # This node's own address on launcher.socket_ifname, where hostnames may resolve to loopback.
        local_addr = interface_address(self.socket_ifname) if self.socket_ifname else None
        cmd = self.command(env.num_nodes, env.hostnames[0], job_id, local_addr)
        child_env = {**os.environ, **socket_env(self.socket_ifname)}
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
        """Time limit or preemption: the ranks write a step checkpoint, then the job requeues and resumes
        from that step (see train/preemption.py)."""
        import submitit

        stop_ranks_at_step_boundary()
        self.requeued = True
        return submitit.helpers.DelayedSubmission(self)


def _preemption_signal() -> signal.Signals:
    from submitit.slurm.slurm import SlurmJobEnvironment

    return getattr(signal, "SIG" + SlurmJobEnvironment.USR_SIG)


_RUNNING: dict[str, subprocess.Popen] = {}  # this node task's torchrun (not pickled with the job)
STOP_GRACE_S = 60.0  # how long the ranks may take to reach a step boundary and write the step checkpoint


def stop_ranks_at_step_boundary(grace_s: float = STOP_GRACE_S) -> None:
    """SIGUSR1 to this node's ranks: they vote at the next step boundary (one signalled rank stops them
    all), rank 0 writes a step checkpoint, and they exit; wait for torchrun to end, at most `grace_s`."""
    proc = _RUNNING.get("torchrun")
    if proc is None or proc.returncode is not None:
        return
    ranks = _descendants(proc.pid)
    for pid in ranks:
        try:
            os.kill(pid, signal.SIGUSR1)
        except OSError:
            pass
    # Not proc.wait(): this runs in a signal handler that interrupted a proc.wait() holding its lock.
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        running = _processes()
        if not any(running.get(pid, (None, None))[1] == started for pid, started in ranks.items()):
            return
        time.sleep(0.5)
    print(f"ranks did not stop within {grace_s:.0f}s; the job resumes from the last checkpoint", flush=True)


def run_torchrun(cmd: list[str], env: dict[str, str], ignore: signal.Signals | None = None) -> int:
    """Run torchrun to its end and return its status; never leave it or its ranks behind.

    `ignore` (submitit's preemption signal) is ignored by torchrun and, inherited, by the ranks: only
    this process acts on it. Should this process be stopped early (submitit exits after requeueing),
    torchrun gets SIGTERM, which it passes on to the ranks, and SIGKILL after TORCHRUN_GRACE_S.
    """

    parent = os.getpid()

    def child_setup() -> None:
        if ignore is not None:
            signal.signal(ignore, signal.SIG_IGN)
        die_with_parent(parent=parent)  # this node task killed: torchrun too, and its ranks with it

    proc = subprocess.Popen(cmd, env=env, preexec_fn=child_setup)
    _RUNNING["torchrun"] = proc
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
    """Cores for each node's task: launcher.cpus_per_task, or else one per rank on a CPU cluster and
    launcher.cpus_per_rank per GPU (Slurm would otherwise give the single task one core for all its ranks)."""
    launcher = cfg.launcher
    if launcher.cpus_per_task is not None:
        return launcher.cpus_per_task
    # One core per gloo rank on CPU nodes; on GPU nodes cpus_per_rank each (the ranks' threads are then the
    # node's cores / GPUs per node, see planning/plan.py), so batch assembly does not run on one core.
    return launcher.gpus_per_node * (1 if launcher.cpu else launcher.cpus_per_rank)


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
    # A node task that fails (its torchrun ended with a failed rank) ends the whole step at once: the other
    # nodes' ranks would otherwise wait in a collective until launcher.collective_timeout_min.
    params["srun_args"] = ["--kill-on-bad-exit=1"]
    if "cpus_per_task" in params:  # srun does not take it from the allocation since Slurm 22.05
        params["srun_args"].append(f"--cpus-per-task={params['cpus_per_task']}")
    return params


def job_for(cfg: Config, run_dir: Path) -> TorchrunJob:
    launcher = cfg.launcher
    return TorchrunJob(str(run_dir.resolve()), launcher.gpus_per_node, launcher.rdzv_port, launcher.max_restarts,
                       local_addr=launcher.local_addr, rdzv_conf=launcher.rdzv_conf,
                       socket_ifname=launcher.socket_ifname)


def batch_script(params: dict[str, Any], folder: Path) -> str:
    """The batch script submitit submits with these parameters and log folder (`folder` holds %j)."""
    from submitit.slurm.slurm import _make_sbatch_string

    return _make_sbatch_string(command=f"{shlex.quote(sys.executable)} -u -m submitit.core._submit {folder}",
                               folder=str(folder), **params)


def dry_run(cfg: Config, run_dir: Path) -> int:
    """Print the batch script submitit would submit and the torchrun line each node runs."""
    params = slurm_parameters(cfg)
    script = batch_script(params, run_dir.resolve() / "slurm" / "%j")  # as submit() hands it to submitit
    torchrun = job_for(cfg, run_dir).command(params["nodes"], "$FIRST_NODE", "$SLURM_JOB_ID")
    print(f"dry run: {params['nodes']} nodes x {cfg.launcher.gpus_per_node} ranks = {cfg.gpus} ranks; "
          "nothing submitted")
    print("---- batch script ----")
    print(script)
    print("---- torchrun, one per node ($FIRST_NODE = first host of $SLURM_JOB_NODELIST) ----")
    print(" ".join(shlex.quote(c) if not c.startswith("--rdzv") else c for c in torchrun))
    return 0


def submit_jobs(folder: Path, params: dict[str, Any], jobs: list[TorchrunJob]) -> list:
    """Submit one Slurm job, or one job array of len(jobs) tasks (params' array_parallelism running at
    once); submitit writes the logs under `folder` (which holds %j). Returns submitit's jobs."""
    import submitit

    try:
        executor = submitit.SlurmExecutor(folder=str(folder), max_num_timeout=MAX_TIMEOUT_REQUEUES)
    except RuntimeError as err:
        raise UserError(f"launcher=slurm: expected a Slurm cluster (srun on PATH), found none ({err})") from None
    executor.update_parameters(**params)
    try:
        return executor.submit_array(jobs) if len(jobs) > 1 else [executor.submit(jobs[0])]
    except (submitit.core.utils.FailedJobError, subprocess.CalledProcessError) as err:  # sbatch said no
        lines = [line for line in str(err).splitlines() if line.strip()]
        raise UserError(f"launcher=slurm: sbatch refused the job: {lines[-1] if lines else err}") from None


def check_partition_has_gpus(cfg: Config) -> None:
    """A GPU request on nodes without GPUs is refused by sbatch as "Invalid generic resource (gres)
    specification"; ask sinfo first and name the key to set. Silent where sinfo cannot tell."""
    if cfg.launcher.cpu:
        return
    partition = cfg.launcher.partition
    cmd = ["sinfo", "-h", "-o", "%P %G"] + (["-p", partition] if partition else [])
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return  # no sinfo, or a slow controller: sbatch decides
    rows = [line.split(None, 1) for line in proc.stdout.splitlines() if line.strip()]
    # without launcher.partition the job goes to the default partition, which sinfo marks with '*'
    gres = [row[1] if len(row) > 1 else "" for row in rows if partition or row[0].endswith("*")]
    if proc.returncode != 0 or not gres or any("gpu" in g for g in gres):
        return
    where = f"partition {partition}" if partition else "the default partition"
    raise UserError(f"launcher.cpu: expected true on {where}, whose nodes have no GPUs (sinfo gres: "
                    f"{', '.join(sorted(set(gres)))}), found {cfg.launcher.cpu!r}: set launcher.cpu=true for gloo "
                    f"ranks on CPU nodes, or launcher.partition=<a GPU partition>")


def submit(cfg: Config, run_dir: Path) -> int:
    """Submit the run (its config.yaml is written already), print where it goes, follow it if asked."""
    if cfg.launcher.prepare_only:
        print(f"prepared run directory {run_dir.resolve()} (config.yaml); nothing submitted", flush=True)
        return 0
    check_partition_has_gpus(cfg)
    [job] = submit_jobs(run_dir.resolve() / "slurm" / "%j", slurm_parameters(cfg), [job_for(cfg, run_dir)])
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
