"""The torchrun command line, built by one pure function for the local and the Slurm launchers."""

from __future__ import annotations

import sys
from pathlib import Path

WORKER_MODULE = "stgnn_launch.train.worker"
AGENT_MODULE = "stgnn_launch.launch.agent"  # torchrun, naming a failed rank in failed.json


def build_torchrun_cmd(*, nnodes: int, nproc_per_node: int, run_dir: Path | str, standalone: bool = False,
                       rdzv_endpoint: str | None = None, rdzv_id: str | None = None, max_restarts: int = 0,
                       local_addr: str | None = None, rdzv_conf: str | None = None,
                       python: str = sys.executable, worker_args: tuple[str, ...] = (),
                       launcher_module: str = "torch.distributed.run") -> list[str]:
    """`python -m torch.distributed.run` (torchrun) starting every rank's worker on one node.

    standalone: one node, rendezvous on a free local port. Otherwise a c10d rendezvous at
    `rdzv_endpoint` (host:port of the first node) shared by all `nnodes` nodes under `rdzv_id`.
    local_addr: the address this node announces to the others (torchrun otherwise takes its FQDN, which
    some sites resolve to loopback); rdzv_conf: torchrun's `key=value,...` rendezvous options;
    launcher_module: torchrun's module, or stgnn_launch.launch.agent (torchrun with a one-line interrupt).
    """
    cmd = [python, "-m", launcher_module, f"--nnodes={nnodes}", f"--nproc_per_node={nproc_per_node}",
           f"--max_restarts={max_restarts}"]
    if standalone:
        cmd.append("--standalone")
    else:
        if not rdzv_endpoint:
            raise ValueError("a multi-node torchrun needs a rendezvous endpoint")
        cmd += ["--rdzv_backend=c10d", f"--rdzv_endpoint={rdzv_endpoint}", f"--rdzv_id={rdzv_id or 'stgnn'}"]
    if rdzv_conf:
        cmd.append(f"--rdzv_conf={rdzv_conf}")
    if local_addr:
        cmd.append(f"--local_addr={local_addr}")
    return cmd + ["-m", WORKER_MODULE, str(run_dir), *worker_args]


def socket_env(socket_ifname: str | None) -> dict[str, str]:
    """The variables that make gloo and NCCL bind `socket_ifname` instead of what the hostname resolves to."""
    return {"GLOO_SOCKET_IFNAME": socket_ifname, "NCCL_SOCKET_IFNAME": socket_ifname} if socket_ifname else {}
