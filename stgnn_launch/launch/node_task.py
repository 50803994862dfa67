"""One Slurm node's task: torchrun over this node's ranks, and what the preemption signal does to them.

Both ways onto Slurm run this code on every node of the job:
- `launcher=slurm` (submitit) pickles a TorchrunJob, which runs a NodeTask;
- scripts/slurm/train.sbatch ends in `srun ... python -m stgnn_launch.launch.node_task OVERRIDES`, whose
  main() reads the batch script's site settings (STGNN_* variables) and the allocation (SLURM_*), prepares
  the run directory on the first node and runs the same NodeTask.

Every node's torchrun meets the others in a c10d rendezvous on the job's first node, at launcher.rdzv_port
or one derived from the job id. No node's workers start before every node has joined, so the first node
can write the run's config.yaml before it starts its torchrun and every rank reads it.

Preemption and time limits: the job asks Slurm for SIGUSR2 (submitit's signal) some seconds before its end,
sent to every process of the job's steps (not the batch shell: `--signal=USR2@...` without `B:`). torchrun and
the ranks ignore it; the node task sends SIGUSR1 to its ranks, which stop at the next step boundary (rank 0
writes a step checkpoint), and the job is requeued: by submitit on its task 0, or by the first node's task
here with `scontrol requeue`. A requeued job (SLURM_RESTART_COUNT > 0) runs every rank with STGNN_RESUME=1,
so they continue from that step.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from stgnn_launch.errors import UserError
from stgnn_launch.launch.local import interface_address
from stgnn_launch.launch.torchrun import AGENT_MODULE, build_torchrun_cmd, socket_env
from stgnn_launch.lifeline import die_with_parent
from stgnn_launch.train.record import RESULTS

RESUME_ENV = "STGNN_RESUME"
PORT_BASE, PORT_SPAN = 15000, 10000  # ports derived from the job id: 15000-24999
TORCHRUN_GRACE_S = 30.0  # after SIGTERM, how long torchrun may take to stop its ranks before SIGKILL
STOP_GRACE_S = 60.0  # how long the ranks may take to reach a step boundary and write the step checkpoint


def rdzv_port(configured: int, job_id: str | int) -> int:
    """The rendezvous port: launcher.rdzv_port, or with 0 one derived from the job id (15000-24999), so
    that jobs sharing a node do not try to open the same port."""
    if configured:
        return configured
    digits = "".join(ch for ch in str(job_id) if ch.isdigit()) or "0"
    return PORT_BASE + int(digits) % PORT_SPAN


def preemption_signal() -> signal.Signals:
    """The signal Slurm sends before the end (submitit's, SIGUSR2 unless SUBMITIT_PREEMPT_SIGNAL says other)."""
    from submitit.slurm.slurm import SlurmJobEnvironment

    return getattr(signal, "SIG" + SlurmJobEnvironment.USR_SIG)


@dataclass(frozen=True)
class SlurmNode:
    """Where this task runs, from the variables Slurm (srun) sets for it."""

    job_id: str  # SLURM_JOB_ID: unique, also for an array task
    num_nodes: int
    head: str  # the job's first host: the rendezvous
    node: int  # SLURM_NODEID: 0 on the first host
    hostname: str
    restarts: int  # SLURM_RESTART_COUNT: how often the job was requeued

    @classmethod
    def here(cls) -> SlurmNode:
        from submitit.slurm.slurm import SlurmJobEnvironment

        env = SlurmJobEnvironment()  # parses SLURM_JOB_NODELIST (n[001-004],...) without asking scontrol
        restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
        return cls(job_id=os.environ.get("SLURM_JOB_ID", ""), num_nodes=env.num_nodes, head=env.hostnames[0],
                   node=env.node, hostname=env.hostname, restarts=int(restarts) if restarts.isdigit() else 0)


class NodeTask:
    """torchrun over this node's ranks, joined to the job's other nodes; see the module's docstring."""

    def __init__(self, run_dir: str, nproc_per_node: int, rdzv_port: int, max_restarts: int, *,
                 local_addr: str | None = None, rdzv_conf: str | None = None,
                 socket_ifname: str | None = None) -> None:
        self.run_dir = run_dir
        self.nproc_per_node = nproc_per_node
        self.rdzv_port = rdzv_port  # 0: derived from the job id
        self.max_restarts = max_restarts
        self.local_addr, self.rdzv_conf, self.socket_ifname = local_addr, rdzv_conf, socket_ifname

    def command(self, nnodes: int, head: str, job_id: str, local_addr: str | None = None) -> list[str]:
        if self.rdzv_port or job_id.isdigit():
            endpoint = f"{head}:{rdzv_port(self.rdzv_port, job_id)}"
        else:  # the dry run, before there is a job id
            endpoint = f"{head}:$(({PORT_BASE}+SLURM_JOB_ID%{PORT_SPAN}))"
        # torchrun through stgnn_launch.launch.agent: a failed rank is named (rank, host) in failed.json
        return build_torchrun_cmd(nnodes=nnodes, nproc_per_node=self.nproc_per_node, run_dir=self.run_dir,
                                  rdzv_endpoint=endpoint, rdzv_id=job_id, max_restarts=self.max_restarts,
                                  local_addr=local_addr or self.local_addr, rdzv_conf=self.rdzv_conf,
                                  launcher_module=AGENT_MODULE)

    def run(self, node: SlurmNode, requeued: bool = False) -> int:
        """Run this node's torchrun to its end; its exit status."""
        # This node's own address on launcher.socket_ifname, where hostnames may resolve to loopback.
        local_addr = interface_address(self.socket_ifname) if self.socket_ifname else None
        cmd = self.command(node.num_nodes, node.head, node.job_id, local_addr)
        child_env = {**os.environ, **socket_env(self.socket_ifname)}
        if requeued or node.restarts > 0:
            child_env[RESUME_ENV] = "1"
            print(f"requeued (restart {node.restarts}): the ranks resume from {self.run_dir}/checkpoints/last.pt",
                  flush=True)
        print(" ".join(shlex.quote(c) for c in cmd), flush=True)
        return run_torchrun(cmd, child_env, ignore=preemption_signal())


class TorchrunJob(NodeTask):
    """What each node's Slurm task runs under submitit (pickled): the NodeTask, with submitit's requeue."""

    requeued = False

    def __call__(self) -> dict[str, Any]:
        node = SlurmNode.here()
        submitits = signal.getsignal(preemption_signal())
        preempted = []

        def on_preemption(signum: int, frame: Any) -> None:
            # On every node: the ranks write a step checkpoint. submitit's handler then calls checkpoint()
            # and requeues on task 0, and leaves the other nodes' tasks running.
            preempted.append(signum)
            stop_ranks_at_step_boundary()
            if callable(submitits):
                submitits(signum, frame)

        signal.signal(preemption_signal(), on_preemption)
        code = self.run(node, self.requeued)
        if code != 0 and not preempted:  # (a preempted node's torchrun ends with its ranks' exit 75)
            raise RuntimeError(f"torchrun exited with status {code} on {node.hostname}; the ranks' errors are "
                               "above in this log")
        results = Path(self.run_dir) / RESULTS
        return {"run_dir": self.run_dir, "results": str(results) if results.is_file() else None}

    def checkpoint(self, *args: Any, **kwargs: Any):
        """Time limit or preemption (submitit's handler, task 0): the ranks have stopped at a step boundary
        (on_preemption); requeue the same job, which resumes from that step (see train/preemption.py)."""
        import submitit

        self.requeued = True
        return submitit.helpers.DelayedSubmission(self)


# ---- the node's process tree ----------------------------------------------------------------------------

_RUNNING: dict[str, subprocess.Popen] = {}  # this node task's torchrun (not pickled with the job)


def stop_ranks_at_step_boundary(grace_s: float = STOP_GRACE_S) -> None:
    """SIGUSR1 to this node's ranks: they vote at the next step boundary (one signalled rank stops them
    all), rank 0 writes a step checkpoint, and they exit; wait for them to end, at most `grace_s`."""
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

    `ignore` (the preemption signal, which Slurm sends to every process of the step) is ignored by torchrun
    and, inherited, by the ranks: only the node task acts on it. Should the node task be stopped early
    (requeued), torchrun gets SIGTERM, which it passes on to the ranks, and SIGKILL after TORCHRUN_GRACE_S.
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


# ---- scripts/slurm/train.sbatch's node task ---------------------------------------------------------------


@dataclass(frozen=True)
class BatchSettings:
    """train.sbatch's site settings, which it exports as STGNN_* variables (srun passes them to every node)."""

    cpu: bool = False  # STGNN_CPU=1: CPU nodes, the ranks are gloo processes
    ranks_per_node: int | None = None  # STGNN_RANKS_PER_NODE; None: the node's GPUs, or with cpu its cores
    max_restarts: int = 0  # STGNN_MAX_RESTARTS: torchrun restarts after a rank fails (they resume)
    socket_ifname: str | None = None  # STGNN_SOCKET_IFNAME: the interface the nodes reach each other on
    rdzv_conf: str | None = None  # STGNN_RDZV_CONF: torchrun --rdzv_conf
    rdzv_port: int = 0  # STGNN_RDZV_PORT; 0: from the job id

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> BatchSettings:
        def number(name: str, low: int) -> int | None:
            text = env.get(name, "").strip()
            if not text:
                return None
            if not text.isdigit() or int(text) < low:
                raise UserError(f"{name}: expected a whole number of at least {low}, found {text!r}")
            return int(text)

        cpu = env.get("STGNN_CPU", "0").strip()
        if cpu not in ("", "0", "1"):
            raise UserError(f"STGNN_CPU: expected 0 or 1, found {cpu!r}")
        return cls(cpu=cpu == "1", ranks_per_node=number("STGNN_RANKS_PER_NODE", 1),
                   max_restarts=number("STGNN_MAX_RESTARTS", 0) or 0,
                   socket_ifname=env.get("STGNN_SOCKET_IFNAME") or None, rdzv_conf=env.get("STGNN_RDZV_CONF") or None,
                   rdzv_port=number("STGNN_RDZV_PORT", 0) or 0)

    def node_ranks(self, env: Mapping[str, str]) -> int:
        """Ranks per node: STGNN_RANKS_PER_NODE, else the node's GPUs, or on CPU nodes its cores for the task."""
        if self.ranks_per_node:
            return self.ranks_per_node
        if self.cpu:
            found = env.get("SLURM_CPUS_PER_TASK", "1")
        else:  # SLURM_GPUS_PER_NODE is e.g. 4 or a100:4
            found = env.get("SLURM_GPUS_ON_NODE") or env.get("SLURM_GPUS_PER_NODE", "").rsplit(":", 1)[-1]
        if not re.fullmatch(r"[1-9][0-9]*", found):
            raise UserError("ranks per node: expected GPUs in this job (--gpus-per-node), STGNN_CPU=1 for CPU "
                            f"nodes, or STGNN_RANKS_PER_NODE, found {found!r} GPUs on the node")
        return int(found)


def batch_run_dir(overrides: list[str], env: Mapping[str, str]) -> tuple[Path, list[str]]:
    """The run directory (hydra.run.dir=... if given, else runs/slurm-<job id>, for an array task
    runs/slurm-<array job id>_<task id>: stable across requeues) and the other overrides."""
    tag = env["SLURM_JOB_ID"]
    if env.get("SLURM_ARRAY_JOB_ID"):
        tag = f"{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID', '0')}"
    run_dir, rest = f"runs/slurm-{tag}", []
    for arg in overrides:
        if arg.startswith("hydra.run.dir="):
            run_dir = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return Path(os.path.abspath(run_dir)), rest


def prepare_command(settings: BatchSettings, node: SlurmNode, ranks: int, run_dir: Path, overrides: list[str],
                    env: Mapping[str, str]) -> list[str]:
    """stgnn-train writing the run directory and its resolved config.yaml; `gpus` and the launcher keys
    come from the allocation, and on CPU nodes each rank's share of the task's cores is a default that
    the overrides given may change (where Slurm does not bind tasks to cores, a rank would count them all)."""
    defaults = []
    launch = ["launcher=slurm", f"gpus={node.num_nodes * ranks}", f"launcher.gpus_per_node={ranks}",
              "launcher.prepare_only=true"]
    if settings.cpu:
        launch.append("launcher.cpu=true")
        cores = env.get("SLURM_CPUS_PER_TASK", "")
        if cores.isdigit():
            defaults.append(f"trainer.num_threads={max(int(cores) // ranks, 1)}")
    return [sys.executable, "-m", "stgnn_launch.cli.train", *defaults, *overrides, *launch, f"hydra.run.dir={run_dir}"]


def main(argv: list[str] | None = None) -> int:
    """train.sbatch's node task, on every node: prepare the run (first node), then torchrun; on the preemption
    signal the ranks stop at a step boundary and the first node requeues the job."""
    argv = sys.argv[1:] if argv is None else argv
    env = os.environ
    if not env.get("SLURM_JOB_ID"):
        print("node_task: error: SLURM_JOB_ID: expected a Slurm job (srun in scripts/slurm/train.sbatch), "
              "found none", file=sys.stderr)
        return 2
    try:
        settings = BatchSettings.from_env(env)
        ranks = settings.node_ranks(env)
    except UserError as err:
        print(f"node_task: error: {err}", file=sys.stderr)
        return 2
    node = SlurmNode.here()
    run_dir, overrides = batch_run_dir(argv, env)
    task = NodeTask(str(run_dir), ranks, settings.rdzv_port, settings.max_restarts,
                    rdzv_conf=settings.rdzv_conf, socket_ifname=settings.socket_ifname)
    preempted = []

    def on_preemption(signum: int, frame: Any) -> None:
        preempted.append(signum)
        print(f"job {node.job_id}: time limit or preemption near; the ranks write a step checkpoint"
              f"{', then the job is requeued' if node.node == 0 else ''}", flush=True)
        stop_ranks_at_step_boundary()
        raise SystemExit(0)  # (out of torchrun's wait, or the preparation, to the requeue below)

    signal.signal(preemption_signal(), on_preemption)
    try:
        if node.node == 0:
            port = rdzv_port(settings.rdzv_port, node.job_id)
            print(f"job {node.job_id} (restart {node.restarts}): {node.num_nodes} nodes x {ranks} ranks = "
                  f"{node.num_nodes * ranks} ranks, rendezvous {node.head}:{port}, run dir {run_dir}", flush=True)
            # The run directory and its resolved, validated config.yaml (every rank reads it), before this
            # node's torchrun joins the rendezvous: no node's ranks start until it has.
            code = subprocess.run(prepare_command(settings, node, ranks, run_dir, overrides, env)).returncode
            if code != 0:
                return code
        code = task.run(node)
    except UserError as err:  # launcher.socket_ifname without an address on this node
        print(f"node_task: error: {err}", file=sys.stderr)
        return 2
    except SystemExit:
        if not preempted:
            raise
        code = 0
    if preempted:  # the other nodes' tasks end well (srun's --kill-on-bad-exit would end this one first)
        signal.signal(preemption_signal(), signal.SIG_IGN)
        if node.node == 0:
            requeue = subprocess.run(["scontrol", "requeue", node.job_id])
            return requeue.returncode
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
