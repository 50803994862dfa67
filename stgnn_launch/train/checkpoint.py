"""Checkpoints written atomically (temporary file + rename) and read back with weights_only=True."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from stgnn_launch.atomic_write import replacing

from stgnn_launch.errors import UserError

LAST = "last.pt"
BEST = "best.pt"


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """Never leaves a half-written checkpoint under `path`: a crash keeps the previous one."""
    with replacing(path) as tmp:
        torch.save(state, tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())  # on disk before the rename: a node crash keeps the old checkpoint


def load(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"checkpoint: expected a file at {path}, found none")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: say which one
        raise UserError(f"checkpoint {path}: expected a stgnn-launch checkpoint, could not read it ({err})") from err


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"
