"""Submitting `launcher=slurm`: the sbatch parameters for a config, the batch script, the dry run, submitit.

gpus=128 with launcher.gpus_per_node=4 gives 32 nodes; every node's task (launch/node_task.py) starts
torchrun with --nnodes=32 --nproc_per_node=4 and a c10d rendezvous on the job's first node. On a CPU cluster
(launcher.cpu=true) no GPUs are requested, the ranks are gloo processes, and each node's task asks for
one core per rank unless launcher.cpus_per_task says otherwise. The job asks Slurm for submitit's signal
launcher.signal_delay_s seconds before its end, and submitit requeues it at most MAX_TIMEOUT_REQUEUES times.

`launcher.prepare_only=true` writes the run directory and its config.yaml and submits nothing: that is
how scripts/slurm/train.sbatch's node task prepares a run before it starts torchrun.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from stgnn_launch.config.schema import Config
from stgnn_launch.errors import UserError
from stgnn_launch.launch.node_task import TorchrunJob
from stgnn_launch.launch.slurm_watch import follow

MAX_TIMEOUT_REQUEUES = 10  # submitit requeues a job that reached its time limit at most this often


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
    """The batch script submitit submits with these parameters and log folder (`folder` holds %j), rendered
    here as submitit renders it (it has no public way to show one before submitting): sorted #SBATCH lines,
    the setup lines, then srun starting submitit's runner on every node. The submitted one is
    <folder>/<job id>_submission.sh."""
    from submitit.core.utils import JobPaths
    from submitit.slurm.slurm import SlurmJobEnvironment

    own = {"setup", "srun_args", "additional_parameters", "signal_delay_s", "array_parallelism", "map_count"}
    flags = {"wckey": "submitit", **{k: v for k, v in params.items() if k not in own and v is not None}}
    flags["signal"] = f"{SlurmJobEnvironment.USR_SIG}@{params.get('signal_delay_s', 90)}"
    paths = JobPaths(folder=folder)
    stdout, stderr = str(paths.stdout), str(paths.stderr)
    if params.get("map_count"):  # an array: <array id>_<task id> in the log names
        count = params["map_count"]
        flags["array"] = f"0-{count - 1}%{min(count, params.get('array_parallelism', 256))}"
        stdout, stderr = stdout.replace("%j", "%A_%a"), stderr.replace("%j", "%A_%a")
    flags.update({"output": stdout.replace("%t", "0"), "error": stderr.replace("%t", "0"), "open-mode": "append"})
    flags.update(params.get("additional_parameters") or {})
    lines = ["#!/bin/bash", "", "# Parameters"]
    for key in sorted(flags):
        value = flags[key]
        lines.append(f"#SBATCH --{key.replace('_', '-')}" + ("" if value is True else f"={shlex.quote(str(value))}"))
    if params.get("setup") is not None:
        lines += ["", "# setup", *params["setup"]]
    srun = ["srun", "--unbuffered", "--output", stdout, "--error", stderr, *params.get("srun_args", [])]
    command = f"{shlex.quote(sys.executable)} -u -m submitit.core._submit {shlex.quote(str(folder))}"
    return "\n".join([*lines, "", "# command", "export SUBMITIT_EXECUTOR=slurm",
                      " ".join(shlex.quote(a) for a in srun) + " " + command, ""])


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
