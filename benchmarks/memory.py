"""Peak RSS and resident data bytes of `standard` vs `index` batching, side by side in one run.

Each mode runs in its own fresh process on the same PEMS-BAY-shaped synthetic series (325 sensors x
52,116 five-minute steps by default): load the file, split and fit the scaler, build the windows, then
cut `--batches` training batches. The last line printed is one JSON object with the ratios index / standard.

    python benchmarks/memory.py                      # PEMS-BAY shape
    python benchmarks/memory.py --nodes 207 --steps 34272   # METR-LA shape
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def child(mode: str, path: str, batches: int) -> None:
    """Runs in a fresh interpreter: one mode, then its own peak RSS on stdout."""
    import torch

    from stgnn_launch.data.batching import TrainSchedule, BatchFeed, build_source
    from stgnn_launch.data.prepare import PrepareSpec, prepare
    from stgnn_launch.data.readers.hdf5_native import read_native
    from stgnn_launch.train.record import peak_rss_bytes

    torch.set_num_threads(1)
    series = read_native(path)
    prepared = prepare(series, PrepareSpec())
    del series
    source = build_source(mode, prepared, torch.device("cpu"))
    if mode == "standard":  # the field's pipeline keeps the windows only (as stgnn-train does)
        prepared = prepared.with_values(torch.empty(0))
    batcher = TrainSchedule(source.count("train"), batch_size=64, shuffle=True, seed=0)
    feed = BatchFeed(source, torch.device("cpu"), 64)
    checksum = 0.0
    for i, (x, y) in enumerate(feed.batches("train", batcher.train_positions(1))):
        checksum += float(x[0, 0, 0, 0]) + float(y[-1, -1, -1, 0])
        if i + 1 == batches:
            break
    print(json.dumps({"mode": mode, "data_bytes": source.data_bytes, "peak_rss_bytes": peak_rss_bytes(),
                      "windows": {k: len(v) for k, v in prepared.starts.items()}, "checksum": checksum}))


def run_mode(mode: str, path: Path, batches: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", mode, "--path", str(path), "--batches", str(batches)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=325)
    parser.add_argument("--steps", type=int, default=52116)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--cache", default=os.environ.get("STGNN_CACHE", str(Path(tempfile.gettempdir()) / "stgnn-bench")))
    parser.add_argument("--child", choices=["standard", "index"])
    parser.add_argument("--path")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.path, args.batches)
        return

    from stgnn_launch.data.synthetic import ensure_synthetic

    path = ensure_synthetic(Path(args.cache), args.nodes, args.steps, args.seed)
    results = {mode: run_mode(mode, path, args.batches) for mode in ("standard", "index")}
    assert results["standard"]["checksum"] == results["index"]["checksum"], "the two modes cut different batches"
    mib = 1024**2
    print(f"series: {args.steps} steps x {args.nodes} sensors ({path})")
    print(f"{'mode':>10} {'data MiB':>10} {'peak RSS MiB':>13}")
    for mode, r in results.items():
        print(f"{mode:>10} {r['data_bytes'] / mib:10.1f} {r['peak_rss_bytes'] / mib:13.1f}")
    summary = {
        "nodes": args.nodes, "steps": args.steps,
        "standard_data_bytes": results["standard"]["data_bytes"], "index_data_bytes": results["index"]["data_bytes"],
        "standard_peak_rss_bytes": results["standard"]["peak_rss_bytes"],
        "index_peak_rss_bytes": results["index"]["peak_rss_bytes"],
        "data_bytes_ratio": round(results["index"]["data_bytes"] / results["standard"]["data_bytes"], 4),
        "peak_rss_ratio": round(results["index"]["peak_rss_bytes"] / results["standard"]["peak_rss_bytes"], 4),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
