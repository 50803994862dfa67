"""One run per run directory: an advisory `flock` on `<run dir>/.run.lock`, held for the run's life.

The kernel releases the lock when the holding process ends, however it ends (SIGKILL included), so a lock
file left by a dead run never blocks the next one. The holder writes its pid and host into the file, and a
second run into a held directory is refused in one line naming them. The launcher takes the lock before it
writes anything; `stgnn-train gpus=N` keeps it across its exec into torchrun (the descriptor is inherited)
and tells its ranks through STGNN_RUN_LOCK that it holds it. Rank 0 takes it itself otherwise (a Slurm job).
Once the lock is held nobody else writes in the directory, so temporary files of a killed write are removed.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from stgnn_launch.errors import UserError

from stgnn_launch.rundir import LOCK as LOCK_FILE, checkpoints  # noqa: E402
HELD_ENV = "STGNN_RUN_LOCK"  # the run directory a launcher above this process holds the lock of

_held: dict[str, int] = {}  # resolved run directory -> descriptor, for this process


class RunDirBusy(UserError):
    """Another live process holds the run directory: nothing of ours may be written (or removed) there."""

    keep_run_dir = True


def _key(run_dir: Path) -> str:
    return str(Path(run_dir).resolve())


def hold(run_dir: Path, inheritable: bool = False) -> bool:
    """Take the run directory's lock for this process; False (nothing done) if this process or its
    launcher holds it already. `inheritable`: kept by a program this process execs (torchrun)."""
    key = _key(run_dir)
    if key in _held or os.environ.get(HELD_ENV) == key:
        return False
    Path(key).mkdir(parents=True, exist_ok=True)
    fd = os.open(Path(key) / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 256, 0).decode(errors="replace").split()
        os.close(fd)
        pid, host = (holder + ["?", "?"])[:2]
        raise RunDirBusy(f"run directory {key}: expected no other run using it, found one running "
                         f"(pid {pid} on host {host}); wait for it, or choose another hydra.run.dir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
    os.set_inheritable(fd, inheritable)
    _held[key] = fd
    remove_stale_temporaries(Path(key))
    return True


def child_env(run_dir: Path) -> dict[str, str]:
    """The variable that tells child processes (torchrun's ranks) that their launcher holds the lock (none
    when it does not: the ranks then take it themselves)."""
    return {HELD_ENV: _key(run_dir)} if _key(run_dir) in _held else {}


def release(run_dir: Path) -> None:
    fd = _held.pop(_key(run_dir), None)
    if fd is not None:
        os.close(fd)  # closing the last descriptor releases the flock


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """`.<name>.<pid>.tmp` files beside the run's files and checkpoints: left by a write that was killed
    (or failed without cleaning up). Only called by the lock's holder, so none of them is being written."""
    removed = []
    for folder in (run_dir, checkpoints(run_dir)):
        if folder.is_dir():
            for path in folder.glob(".*.tmp"):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed
