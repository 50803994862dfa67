"""A process that dies with its parent: Linux's PR_SET_PDEATHSIG, asked for by each rank (its parent is the
node's torchrun) and by torchrun under a Slurm node task (its parent is that task), so that SIGKILL of a
launcher does not leave ranks training on their own (they run in sessions of their own, out of reach of a
process-group kill)."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# Loaded once, here: a child between fork and exec (a Popen preexec_fn) must not load libraries.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def die_with_parent(sig: signal.Signals = signal.SIGKILL, parent: int | None = None) -> bool:
    """Ask the kernel to send `sig` to this process when its parent ends; False where it cannot (not Linux).

    `parent`: the pid the caller saw as its parent before asking. If that parent ended in between (the
    signal is then never sent), end now rather than run on as an orphan."""
    if _LIBC is None:
        return False
    if _LIBC.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        return False
    if os.getppid() != (parent if parent is not None else os.getppid()) or os.getppid() == 1:
        os.kill(os.getpid(), sig)
    return True
