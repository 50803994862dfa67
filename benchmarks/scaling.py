"""1 vs 2 CPU ranks at the same global batch: standard DDP against distributed index batching.

"standard" is the field's DDP pipeline: every rank materializes all windows and takes its shard of
each global batch. "dist_index" keeps one copy of the series per node in shared memory and cuts
batches from start indices. Each configuration is a real `stgnn-train` run (torchrun + gloo for 2
ranks); the epoch time is the fastest epoch after the first (the least disturbed by other load on a
shared machine), "setup" is the time from start to the first batch (process group, data load, split,
scaler, windows, model; rank 0's), and "node data" is the host memory for data on the node (shared
pages counted once). The last line printed is one JSON object.

    python benchmarks/scaling.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def train(mode: str, ranks: int, args, root: Path) -> dict:
    run_dir = root / f"{mode}-{ranks}"
    cmd = [sys.executable, "-m", "stgnn_launch.cli.train", f"batching={mode}", f"gpus={ranks}",
           f"batching.batch_size={args.global_batch // ranks}", f"dataset.num_nodes={args.nodes}",
           f"dataset.num_steps={args.steps}", f"model.params.hidden={args.hidden}",
           f"trainer.max_epochs={args.epochs}", f"trainer.max_batches_per_epoch={args.batches}",
           "trainer.progress=false", "trainer.patience=100", f"hydra.run.dir={run_dir}"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    record = json.loads((run_dir / "results.json").read_text())
    times = [e["epoch_time_s"] for e in record["epochs"]][1:] or [record["epochs"][0]["epoch_time_s"]]
    return {"epoch_time_s": min(times), "setup_time_s": record["setup_time_s"], "node_data_bytes": record["node_data_bytes"],
            "rank_data_bytes": record["data_bytes"], "world_size": record["world_size"],
            "train_loss": [e["train_loss"] for e in record["epochs"]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--steps", type=int, default=8064)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--global-batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=40, help="training batches per epoch")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("STGNN_CACHE", str(Path(tempfile.gettempdir()) / "stgnn-bench"))
    with tempfile.TemporaryDirectory() as tmp:
        results = {(m, r): train(m, r, args, Path(tmp)) for m in ("standard", "dist_index") for r in (1, 2)}
    mib = 1024**2
    print(f"synthetic {args.steps} steps x {args.nodes} sensors, global batch {args.global_batch}, "
          f"{args.batches} batches/epoch, T-GCN hidden {args.hidden}")
    print(f"{'mode':>10} {'ranks':>5} {'setup s':>8} {'epoch s':>8} {'node data MiB':>14}")
    for (mode, ranks), r in results.items():
        print(f"{mode:>10} {ranks:>5} {r['setup_time_s']:8.2f} {r['epoch_time_s']:8.2f} "
              f"{r['node_data_bytes'] / mib:14.1f}")
    summary = {"nodes": args.nodes, "steps": args.steps, "global_batch": args.global_batch}
    for mode in ("standard", "dist_index"):
        one, two = results[(mode, 1)], results[(mode, 2)]
        summary[f"{mode}_speedup_2v1"] = round(one["epoch_time_s"] / two["epoch_time_s"], 3)
        summary[f"{mode}_node_data_ratio_2v1"] = round(two["node_data_bytes"] / one["node_data_bytes"], 3)
        summary[f"{mode}_node_data_bytes_1"] = one["node_data_bytes"]
        summary[f"{mode}_node_data_bytes_2"] = two["node_data_bytes"]
        summary[f"{mode}_epoch_time_s_1"] = round(one["epoch_time_s"], 3)
        summary[f"{mode}_epoch_time_s_2"] = round(two["epoch_time_s"], 3)
        summary[f"{mode}_setup_time_s_1"] = round(one["setup_time_s"], 3)
        summary[f"{mode}_setup_time_s_2"] = round(two["setup_time_s"], 3)
    summary["dist_index_vs_standard_epoch_time_2"] = round(
        results[("standard", 2)]["epoch_time_s"] / results[("dist_index", 2)]["epoch_time_s"], 3)
    summary["dist_index_vs_standard_setup_time_2"] = round(
        results[("standard", 2)]["setup_time_s"] / results[("dist_index", 2)]["setup_time_s"], 3)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
