"""Stopping at a step boundary without losing the epoch: Slurm's warning signal (SIGUSR1, or SIGTERM)
sets a flag; at the next step boundary the ranks vote (one tiny host-side all-reduce), and if any rank
was signalled, or a periodic checkpoint is due, rank 0 writes a step-level checkpoint. A signalled run
then ends (`Preempted`) and continues from that step when resumed or requeued.

`STGNN_SIGNAL_AT=EPOCH:STEP` makes rank 0 signal itself after that step: the tests' way of putting a
real preemption at an exact place.
"""

from __future__ import annotations

import os
import signal
import threading
import time

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
TEST_SIGNAL_ENV = "STGNN_SIGNAL_AT"
PREEMPTED_EXIT = 75  # EX_TEMPFAIL: stopped on purpose, try again (torchrun restarts resume from the step)


class Preempted(Exception):
    """The run stopped on a signal after writing a step checkpoint; a resume continues from there.
    `signum`: the signal, where known (a launcher exits with 128 + it)."""

    def __init__(self, message: str = "", signum: int | None = None) -> None:
        super().__init__(message)
        self.signum = signum


class StopRequest:
    def __init__(self, checkpoint_every_min: float | None = None) -> None:
        self.signal: int | None = None
        self.every_s = 60.0 * checkpoint_every_min if checkpoint_every_min else None
        self._last = time.monotonic()
        self._previous: dict[int, object] = {}
        at = os.environ.get(TEST_SIGNAL_ENV, "")
        self.test_at = tuple(int(v) for v in at.split(":")) if at else None

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread (in-process test runs)
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        """Put the earlier handlers back; a signal that came after the last step boundary (nothing left to
        checkpoint) is handed to the earlier handler where that is a Python one (stgnn-profile's stop)."""
        previous, self._previous = self._previous, {}
        for sig, handler in previous.items():
            if signal.getsignal(sig) == self._handle:  # not one set since (the worker's Ctrl-C ignores SIGTERM)
                signal.signal(sig, handler)
        late = previous.get(self.signal) if self.signal is not None else None
        if callable(late):
            late(self.signal, None)

    def _handle(self, signum: int, frame) -> None:
        self.signal = signum

    def after_step(self, epoch: int, step: int, is_main: bool) -> tuple[bool, bool]:
        """(stop requested here, periodic checkpoint due here), before the ranks' vote."""
        if is_main and self.test_at == (epoch, step):
            os.kill(os.getpid(), signal.SIGUSR1)
        periodic = self.every_s is not None and time.monotonic() - self._last >= self.every_s
        return self.signal is not None, periodic

    def checkpointed(self) -> None:
        self._last = time.monotonic()
