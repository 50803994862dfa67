"""torchrun as the node's launcher process: one line instead of a traceback when interrupted, and the rank
that failed named in the run's failed.json.

`stgnn-train gpus=N` on one node replaces itself with this (exec), and every Slurm node task runs it:
torchrun's own entry point, whose SignalException on Ctrl-C or SIGTERM becomes "stgnn-train: interrupted
(SIGINT)" and exit 128 + signal, as a shell reports a process killed by that signal.

When a rank fails (an error, a non-zero exit, killed by a signal), torchrun stops this node's other ranks
and raises ChildFailedError with the ranks it saw fail. Rank 0 writes failed.json only for its own error,
and a rank killed by a signal writes nothing, so this process adds the first failed rank to failed.json:
`failed_rank` (rank, local rank, host, exit code, signal, time) and every failure this node saw
(`failures`); without a failed.json it also writes `error` and `type` (what `stgnn-report` shows). On
several nodes each node's agent merges its first failure in, and the earliest one stays.
"""

from __future__ import annotations

import json
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from stgnn_launch.launch.torchrun import WORKER_MODULE
from stgnn_launch.train.preemption import PREEMPTED_EXIT
from stgnn_launch.train.record import FAILED, write_json_atomic

RANK_FAILED = "RankFailed"  # failed.json's `type` when no rank wrote its own error


def worker_run_dir(argv: list[str]) -> Path | None:
    """The run directory of a training worker's torchrun command line (None for an evaluation, which
    must not mark a finished run as failed, or for another script)."""
    for i, arg in enumerate(argv[:-2]):
        if arg == "-m" and argv[i + 1] == WORKER_MODULE:
            return None if "--eval" in argv[i + 3:] else Path(argv[i + 2])
    return None


def describe(rank: int, failure: Any, host: str) -> dict[str, Any]:
    """One failed rank as failed.json names it (`failure`: torchrun's ProcessFailure)."""
    signame = failure.signal_name() if failure.exitcode < 0 else None
    return {"rank": rank, "local_rank": failure.local_rank, "host": host, "exitcode": failure.exitcode,
            "signal": signame, "time": failure.timestamp}


def record_failure(run_dir: Path, failures: dict[int, Any], host: str | None = None) -> dict[str, Any] | None:
    """Merge this node's failed ranks into run_dir/failed.json; returns what was written (None: nothing,
    as for ranks that stopped for preemption, which resume)."""
    if any(failure.exitcode == PREEMPTED_EXIT for failure in failures.values()) or not run_dir.is_dir():
        return None  # stopped for preemption (the others then by torchrun): the run resumes, it did not fail
    host = host or socket.gethostname()
    entries = [describe(rank, failure, host) for rank, failure in failures.items()]
    if not entries:
        return None
    # The earliest; torchrun stamps whole seconds, and within one its failures are in the order it saw them
    # (then come the ranks it stopped itself, SIGTERM, for its bookkeeping): a killed rank comes before the
    # peers whose collectives failed because of it.
    first = min(entries, key=lambda entry: entry["time"])
    path = run_dir / FAILED
    try:
        record = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        record = {}
    if not isinstance(record, dict):
        record = {}
    known = record.get("failed_rank")
    if isinstance(known, dict) and isinstance(known.get("time"), (int, float)) and known["time"] <= first["time"]:
        first = known  # another node's rank failed first (or in the same second)
    record["failed_rank"] = first
    record["failures"] = [e for e in record.get("failures", []) if isinstance(e, dict) and e.get("host") != host] \
        + entries
    if "error" not in record:  # no rank wrote its own error (killed by a signal, or not rank 0)
        how = f"signal {first['signal']}" if first["signal"] else f"exit code {first['exitcode']}"
        record.update({"error": f"rank {first['rank']} on {first['host']} ended with {how}", "type": RANK_FAILED,
                       "time": first["time"]})
    write_json_atomic(record, path)
    return record


def main() -> None:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    try:
        torchrun()  # parses sys.argv as `torchrun` does
    except SignalException as stop:
        sigval = signal.Signals(stop.sigval)
        print(f"stgnn-train: interrupted ({sigval.name})", file=sys.stderr)
        sys.exit(128 + int(sigval))
    except ChildFailedError as failed:
        run_dir = worker_run_dir(sys.argv)
        if run_dir is not None:
            record = record_failure(run_dir, failed.failures)
            if record is not None:
                rank = record["failed_rank"]
                print(f"stgnn-train: rank {rank['rank']} on {rank['host']} failed first; see {run_dir / FAILED}",
                      file=sys.stderr)
        raise


if __name__ == "__main__":
    main()
