"""Checkpoints written atomically (temporary file + rename) and read back with weights_only=True."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch

from stgnn_launch.atomic_write import replacing

from stgnn_launch.errors import UserError, disk_full, free_bytes, is_disk_full

from stgnn_launch.rundir import BEST, LAST  # noqa: F401 (the trainer reads them from here)
from stgnn_launch.rundir import checkpoints as checkpoint_dir  # noqa: F401


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """Never leaves a half-written checkpoint under `path`: a crash keeps the previous one. A full disk is
    one line naming the file and the space it needs (the temporary file removed first)."""
    error: BaseException | None = None
    try:
        with replacing(path) as tmp, open(tmp, "wb") as handle:  # ours to close: torch's own writer, on a
            torch.save(state, handle)  # failed write, stays open and keeps the unlinked file's space
            handle.flush()
            os.fsync(handle.fileno())  # on disk before the rename: a node crash keeps the old checkpoint
    except (OSError, RuntimeError) as err:  # torch.save reports a short write as "unexpected pos" (no errno)
        error = err
    if error is None:
        return
    errno_full = is_disk_full(error)
    needed = tensor_bytes(state)
    free = free_bytes(path.parent)
    if errno_full or (free is not None and free < needed + 2**20):
        raise disk_full(path, needed, error if isinstance(error, OSError) else None)
    raise error


def tensor_bytes(value: Any) -> int:
    """The bytes of every tensor in a (nested) state: what a checkpoint of it needs on disk, roughly."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v) for v in value)
    return 0


def load(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"checkpoint: expected a file at {path}, found none")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated, foreign or unsafe file: say which, in one line
        unsafe = "weights_only" in str(err) or "Unsupported global" in str(err)
        why = ("it holds objects other than tensors and plain data, which loading would run; it is not loaded"
               if unsafe else (str(err).strip().splitlines() or [type(err).__name__])[0])
        raise UserError(f"checkpoint {path}: expected a stgnn-launch checkpoint, could not read it ({why})") from None


def cpu_copy(weights: dict[str, Any]) -> dict[str, Any]:
    """A copy of a state dict on the host, kept while training goes on (the best epoch's weights); a module's
    extra state (a host count, models/host_state.py) is copied as it is."""
    return {k: v.detach().to("cpu", copy=True) if isinstance(v, torch.Tensor) else copy.deepcopy(v)
            for k, v in weights.items()}


def save_pair(state: dict[str, Any], ckpt_dir: Path, improved: bool) -> None:
    """last.pt, then best.pt when the epoch improved. last.pt carries the best epoch's weights itself
    (`best_model`), so it is the one record of which epoch is best: a kill between the two renames leaves
    a best.pt that `best_weights` and `reconcile_best` recognise as stale by its epoch and replace."""
    save_atomic(state, ckpt_dir / LAST)
    if improved:
        save_atomic({"epoch": state["best_epoch"], "model": state["best_model"]}, ckpt_dir / BEST)


def reconcile_best(ckpt_dir: Path, state: dict[str, Any]) -> bool:
    """Make best.pt the epoch last.pt names (after a kill between the renames); True if it was rewritten.
    A checkpoint from before `best_model` existed cannot repair it: that is refused in one line."""
    best = ckpt_dir / BEST
    claimed = state.get("best_epoch", 0)
    if claimed == 0:  # no finished epoch has improved yet: no best.pt is expected
        return False
    found = load(best).get("epoch") if best.is_file() else None
    if found == claimed:
        return False
    if state.get("best_model") is None:
        raise UserError(f"checkpoint {best}: expected the best epoch {claimed} that {ckpt_dir / LAST} names, found "
                        f"{'no file' if found is None else f'epoch {found}'}; the run cannot be resumed safely")
    save_atomic({"epoch": claimed, "model": state["best_model"]}, best)
    return True


def best_weights(ckpt_dir: Path) -> tuple[int | None, dict[str, torch.Tensor]]:
    """The best epoch's weights as last.pt names them (stgnn-eval of a finished or killed run)."""
    last = ckpt_dir / LAST
    state = load(last) if last.is_file() else {}
    if state.get("best_model") is not None and state.get("best_epoch"):
        return state["best_epoch"], state["best_model"]
    best = load(ckpt_dir / BEST)
    claimed = state.get("best_epoch")
    if claimed and best.get("epoch") not in (None, claimed):
        raise UserError(f"checkpoint {ckpt_dir / BEST}: expected the best epoch {claimed} that {last} names, "
                        f"found epoch {best.get('epoch')}")
    return best.get("epoch"), best["model"]


def load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], path: Path) -> None:
    """load_state_dict, with a checkpoint of another model shape said in one line instead of torch's list."""
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
        raise UserError(f"checkpoint {path}: expected weights of this model's shape, found others ({first})") from None
