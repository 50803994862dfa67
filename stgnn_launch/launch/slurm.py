"""`launcher=slurm`: submit through submitit, one Slurm task per node, each running torchrun.

gpus=128 with launcher.gpus_per_node=4 gives 32 nodes; every node's task starts torchrun with
--nnodes=32 --nproc_per_node=4 and a c10d rendezvous on the job's first node. On a time limit or a
preemption, submitit calls `checkpoint()`, which requeues the same job; the ranks then resume from the
run directory's last checkpoint.
"""

from __future__ import annotations

import os
import shlex
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


class TorchrunJob:
    """What each node's Slurm task runs (pickled by submitit): torchrun over this node's ranks."""

    def __init__(self, run_dir: str, nproc_per_node: int, rdzv_port: int, max_restarts: int) -> None:
        self.run_dir = run_dir
        self.nproc_per_node = nproc_per_node
        self.rdzv_port = rdzv_port
        self.max_restarts = max_restarts
        self.requeued = False

    def command(self, nnodes: int, head: str, job_id: str) -> list[str]:
        return build_torchrun_cmd(nnodes=nnodes, nproc_per_node=self.nproc_per_node, run_dir=self.run_dir,
                                  rdzv_endpoint=f"{head}:{self.rdzv_port}", rdzv_id=job_id,
                                  max_restarts=self.max_restarts)

    def __call__(self) -> dict[str, Any]:
        import submitit

        env = submitit.JobEnvironment()
        cmd = self.command(env.num_nodes, env.hostnames[0], str(env.job_id))
        child_env = dict(os.environ)
        if self.requeued or int(os.environ.get("SLURM_RESTART_COUNT", "0")) > 0:
            child_env[RESUME_ENV] = "1"
        print(" ".join(shlex.quote(c) for c in cmd), flush=True)
        subprocess.run(cmd, check=True, env=child_env)
        results = Path(self.run_dir) / RESULTS
        return {"run_dir": self.run_dir, "results": str(results) if results.is_file() else None}

    def checkpoint(self, *args: Any, **kwargs: Any):
        """Time limit or preemption: requeue; the ranks resume from the last epoch checkpoint."""
        import submitit

        self.requeued = True
        return submitit.helpers.DelayedSubmission(self)


def slurm_parameters(cfg: Config) -> dict[str, Any]:
    """submitit SlurmExecutor parameters (sbatch options) for this config."""
    launcher = cfg.launcher
    nodes = cfg.gpus // launcher.gpus_per_node
    params: dict[str, Any] = {
        "job_name": f"stgnn-{cfg.model.name}-{cfg.batching.mode}",
        "nodes": nodes,
        "ntasks_per_node": 1,  # torchrun starts the node's ranks itself
        "time": launcher.time_min,
        "signal_delay_s": 120,
        "setup": list(launcher.setup),
        "additional_parameters": dict(launcher.sbatch_extra),
    }
    if not launcher.cpu:
        params["gpus_per_node"] = launcher.gpus_per_node
    optional = {"partition": launcher.partition, "account": launcher.account, "qos": launcher.qos,
                "constraint": launcher.constraint, "cpus_per_task": launcher.cpus_per_task,
                "mem": f"{launcher.mem_gb}GB" if launcher.mem_gb else None}
    params.update({k: v for k, v in optional.items() if v is not None})
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
    import submitit

    try:
        executor = submitit.SlurmExecutor(folder=str(run_dir.resolve() / "slurm" / "%j"), max_num_timeout=10)
    except RuntimeError as err:
        raise UserError(f"launcher=slurm: expected a Slurm cluster (srun on PATH), found none ({err})") from None
    executor.update_parameters(**slurm_parameters(cfg))
    job = executor.submit(job_for(cfg, run_dir))
    print(f"submitted Slurm job {job.job_id}: {cfg.gpus // cfg.launcher.gpus_per_node} nodes x "
          f"{cfg.launcher.gpus_per_node} ranks", flush=True)
    print(f"  logs:    {job.paths.stdout}\n           {job.paths.stderr}", flush=True)
    print(f"  run dir: {run_dir}", flush=True)
    if not cfg.launcher.wait:
        return 0
    return follow(job, run_dir)


def follow(job, run_dir: Path) -> int:
    """Wait for the job (requeues included) and print its result."""
    while not job.done():
        time.sleep(5)
    state = job.state
    try:
        job.result()
    except Exception as err:  # the job's own traceback is in its log
        print(f"Slurm job {job.job_id} ended in state {state}: {str(err).splitlines()[0] if str(err) else err}")
        print(f"  see {job.paths.stderr}")
        return 1
    results = run_dir / RESULTS
    print(f"Slurm job {job.job_id} finished ({state}); results: {results}")
    if results.is_file():
        from stgnn_launch.train.record import read_results
        from stgnn_launch.train.run import format_test

        print(format_test(read_results(run_dir)["test"]))
    return 0
