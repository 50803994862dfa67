"""torchrun as the node's launcher process, ending in one line instead of a traceback when interrupted.

`stgnn-train gpus=N` on one node replaces itself with this (exec): torchrun's own entry point, whose
SignalException on Ctrl-C or SIGTERM becomes "stgnn-train: interrupted (SIGINT)" and exit 128 + signal,
as a shell reports a process killed by that signal.
"""

from __future__ import annotations

import signal
import sys


def main() -> None:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.run import main as torchrun

    try:
        torchrun()  # parses sys.argv as `torchrun` does
    except SignalException as stop:
        sigval = signal.Signals(stop.sigval)
        print(f"stgnn-train: interrupted ({sigval.name})", file=sys.stderr)
        sys.exit(128 + int(sigval))


if __name__ == "__main__":
    main()
