"""`launcher=local`: one process in place, or torchrun on this node when gpus > 1."""

from __future__ import annotations

import subprocess
from pathlib import Path

import torch

from stgnn_launch.config.schema import Config
from stgnn_launch.distributed.context import usable_cores
from stgnn_launch.errors import UserError
from stgnn_launch.launch.torchrun import build_torchrun_cmd


def node_capacity(cpu_only: bool) -> tuple[int, str]:
    """How many ranks this node can hold: its GPUs, or its cores when it has none."""
    if not cpu_only and torch.cuda.is_available():
        return torch.cuda.device_count(), "GPUs"
    return usable_cores(), "CPU cores (no GPU, so ranks are CPU processes on gloo)"


def run_torchrun_locally(cfg: Config, run_dir: Path, worker_args: tuple[str, ...] = ()) -> int:
    """torchrun --standalone with `cfg.gpus` ranks, each running the worker on `run_dir`."""
    capacity, what = node_capacity(bool(cfg.launcher.cpu))
    if cfg.gpus > capacity:
        raise UserError(f"gpus: expected at most {capacity} on this node ({capacity} {what}), found {cfg.gpus}")
    cmd = build_torchrun_cmd(nnodes=1, nproc_per_node=cfg.gpus, run_dir=run_dir, standalone=True,
                             max_restarts=cfg.launcher.max_restarts, worker_args=worker_args)
    print(f"starting {cfg.gpus} ranks: {' '.join(cmd)}", flush=True)
    return subprocess.run(cmd, check=False).returncode
