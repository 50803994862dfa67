"""The run record: `results.json` in the run directory, written atomically by rank 0."""

from __future__ import annotations

import json
import resource
import subprocess
from pathlib import Path
from typing import Any

from stgnn_launch.atomic_write import replacing

RESULTS = "results.json"


def peak_rss_bytes() -> int:
    """This process's peak resident set size (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def git_sha() -> str | None:
    """The commit of the stgnn-launch checkout that ran, or None outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def write_json_atomic(data: dict[str, Any], path: Path) -> None:
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")


def read_results(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / RESULTS).read_text())
