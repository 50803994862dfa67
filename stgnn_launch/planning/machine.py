"""What a node offers a rank: cores, GPUs and the memory of one GPU."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stgnn_launch.config.schema import SeriesDtype
from stgnn_launch.distributed.context import usable_cores

DTYPES = {SeriesDtype.float32: torch.float32, SeriesDtype.bfloat16: torch.bfloat16, SeriesDtype.float16: torch.float16}


@dataclass(frozen=True)
class Machine:
    cores: int
    gpus: int  # CUDA devices visible (0 on CPU nodes or with launcher.cpu=true)
    gpu_memory_bytes: int | None = None  # of one device; None: unknown (a Slurm node without launcher.gpu_mem_gb)

    @classmethod
    def detect(cls, cpu_only: bool = False) -> "Machine":
        gpus = 0 if cpu_only or not torch.cuda.is_available() else torch.cuda.device_count()
        memory = torch.cuda.get_device_properties(0).total_memory if gpus else None
        return cls(cores=usable_cores(), gpus=gpus, gpu_memory_bytes=memory)
