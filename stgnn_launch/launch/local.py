"""`launcher=local`: one process in place, or torchrun on this node when gpus > 1."""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import torch

from stgnn_launch.config.schema import Config
from stgnn_launch.distributed.context import usable_cores
from stgnn_launch import run_lock
from stgnn_launch.errors import UserError
from stgnn_launch.launch.torchrun import AGENT_MODULE, build_torchrun_cmd, socket_env

SIOCGIFADDR = 0x8915  # Linux ioctl: an interface's IPv4 address


def node_capacity(cpu_only: bool, share_gpus: bool = False) -> tuple[int, str]:
    """How many ranks this node can hold: its GPUs (its cores when gloo ranks share them), or its cores."""
    if not cpu_only and torch.cuda.is_available():
        if share_gpus:
            return usable_cores(), "CPU cores; gloo ranks share the GPUs"
        return torch.cuda.device_count(), "GPUs"
    return usable_cores(), "CPU cores (no GPU, so ranks are CPU processes on gloo)"


def interface_address(ifname: str) -> str:
    """This node's IPv4 address on network interface `ifname` (asked of the kernel; nothing is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            answer = fcntl.ioctl(sock.fileno(), SIOCGIFADDR, struct.pack("256s", ifname.encode()[:15]))
        except OSError as err:
            raise UserError(f"launcher.socket_ifname: expected a network interface with an IPv4 address on "
                            f"{socket.gethostname()}, found {ifname!r} ({err.strerror})") from None
    return socket.inet_ntoa(answer[20:24])


def run_torchrun_locally(cfg: Config, run_dir: Path, worker_args: tuple[str, ...] = (), *,
                         replace_process: bool = False) -> int:
    """torchrun --standalone with `cfg.gpus` ranks, each running the worker on `run_dir`.

    With `replace_process`, torchrun takes this process's place (exec) instead of running beside it: the
    launcher has nothing left to do once the ranks start, and an idle interpreter holding torch would be
    ~0.26 GiB of the node's memory (5% of a year of PeMS's series) for the whole run."""
    capacity, what = node_capacity(bool(cfg.launcher.cpu), cfg.launcher.backend == "gloo")
    if cfg.gpus > capacity:
        raise UserError(f"gpus: expected at most {capacity} on this node ({capacity} {what}), found {cfg.gpus}")
    launcher = cfg.launcher
    module = AGENT_MODULE if replace_process else "torch.distributed.run"
    cmd = build_torchrun_cmd(nnodes=1, nproc_per_node=cfg.gpus, run_dir=run_dir, standalone=True,
                             max_restarts=launcher.max_restarts, local_addr=launcher.local_addr,
                             rdzv_conf=launcher.rdzv_conf, worker_args=worker_args,
                             launcher_module=module)
    print(f"starting {cfg.gpus} ranks: {' '.join(cmd)}", flush=True)
    env = {**os.environ, **socket_env(launcher.socket_ifname), **run_lock.child_env(run_dir)}
    if replace_process:
        logging.shutdown()  # Hydra's job log: flushed and closed before the exec
        sys.stderr.flush()
        os.execvpe(cmd[0], cmd, env)
    return subprocess.run(cmd, check=False, env=env).returncode
