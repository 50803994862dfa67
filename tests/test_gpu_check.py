"""benchmarks/gpu_check.sh --dry-run: every step of the device check runs on the CPU and the table says so."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_passes_on_cpu(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "CHECK_DIR": str(tmp_path), "STGNN_CACHE": str(tmp_path / "cache")}
    out = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run"], capture_output=True,
                         text=True, env=env, timeout=1200, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "0 failed" in out.stdout
    rows = [json.loads(line) for line in (tmp_path / "gpu_check.jsonl").read_text().splitlines()]
    labels = {r["label"] for r in rows}
    assert {"default", "index-gpu", "index-host", "standard-gpu", "bf16", "deterministic", "dcrnn", "gwnet",
            "two-ranks-gloo", "two-ranks-record"} <= labels
    probes = [r for r in rows if "syncs_per_step" in r]
    assert probes and all(r["steps"] == 3 and r["test_mae"] > 0 for r in probes)
    two = next(r for r in rows if r["label"] == "two-ranks-record")
    assert two["world_size"] == 2 and two["plan"]["node_shared"] and two["host_data_bytes_per_rank"] is not None
    assert (tmp_path / "two_ranks" / "predictions.npz").is_file()  # gathered on rank 0
