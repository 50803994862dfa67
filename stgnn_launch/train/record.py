"""The run record: `results.json` in the run directory, written atomically by rank 0."""

from __future__ import annotations

import json
import math
import resource
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from stgnn_launch.atomic_write import replacing

from stgnn_launch.rundir import FAILED, RESULTS  # noqa: F401 (read from here by the trainers and tools)
from stgnn_launch.rundir import read_results  # noqa: F401 (the typed record: launch/slurm.py's follow)


def peak_rss_bytes() -> int:
    """This process's peak resident set size: VmHWM from /proc (per address space, so it starts afresh at
    exec; getrusage's ru_maxrss can carry the parent's peak at fork into a child), else getrusage."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports kilobytes


def git_sha() -> str | None:
    """The commit of the stgnn-launch checkout that ran, or None outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def strict_json(value: Any) -> Any:
    """JSON as the standard has it: NaN and infinities become null, durations seconds, tuples lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return strict_json(value.item())
    if isinstance(value, np.timedelta64):
        return float(value / np.timedelta64(1, "s"))
    if isinstance(value, timedelta):
        return value.total_seconds()
    return str(value)


def write_json_atomic(data: dict[str, Any], path: Path) -> None:
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(strict_json(data), indent=2, allow_nan=False) + "\n")


def clear_outcome(run_dir: Path) -> None:
    """A new attempt in a run directory (a resume): the last attempt's results.json or failed.json no
    longer describes the run, and would have reports list it as done while it fails or runs."""
    for name in (RESULTS, FAILED):
        (run_dir / name).unlink(missing_ok=True)
