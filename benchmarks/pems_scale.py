"""The whole-PeMS shape on one machine: load, memory per node with 2 ranks, training speed, the planner.

A synthetic series of PeMS's shape (11,160 sensors x 105,120 five-minute steps, a year) is generated
once, chunk by chunk, into ~/.cache/stgnn-launch/pems_scale (reused afterwards). What is stored is
speed only (T x N x 1 float32, 4.7 GB); the time of day is the covariate every batch computes from
the timestamps, so the model sees speed + time of day without a second stored channel. Then:

1. load: a fresh process reads, fills and prepares the series as `batching=index` does; its time and
   peak RSS over the series' bytes (`load_peak_ratio`);
2. `stgnn-train model=dcrnn_pgti` for a fixed number of steps with `batching=index` (1 rank) and with
   `batching=dist_index gpus=2` (2 CPU ranks on gloo); the node's memory is the sum of the PSS of
   torchrun and its ranks, sampled every 0.2 s (shared pages counted once, as the node holds them),
   over the series' bytes (`node_rss_ratio_2_ranks`), and the samples/s of the training epoch;
3. `stgnn-plan ... batching=standard` at this shape: its verdict and exit status.

    nice python benchmarks/pems_scale.py [--steps 5] [--batch 1] [--no-checkpointing] [--nodes 11160 --num-steps 105120]

The node's memory is the series plus fixed costs per process (torch alone is ~0.25 GiB of private memory
per interpreter: torchrun's agent and each rank) plus each rank's activations; the defaults (1 window
per rank and step, activation checkpointing) measure what the data path costs. Larger batches add their
activations (printed per process at the peak).

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

CACHE = Path.home() / ".cache" / "stgnn-launch" / "pems_scale"


def child_load(nodes: int, steps: int) -> None:
    """Runs in a fresh interpreter: the index path's load (read, fill missing, split + scaler)."""

    import torch

    from stgnn_launch.config.schema import DatasetConfig
    from stgnn_launch.data.datasets import load_dataset
    from stgnn_launch.data.prepare import PrepareSpec, fill_missing, prepare
    from stgnn_launch.train.record import peak_rss_bytes  # VmHWM: ru_maxrss can carry the parent's peak

    torch.set_num_threads(1)
    before = peak_rss_bytes()
    started = time.perf_counter()
    series = load_dataset(DatasetConfig(num_nodes=nodes, num_steps=steps, cache_dir=str(CACHE)))
    fill_missing(series.values, 0.0)
    prepared = prepare(series, PrepareSpec())
    seconds = time.perf_counter() - started
    print(json.dumps({"load_s": seconds, "series_bytes": prepared.values.nbytes,
                      "startup_rss_bytes": before,
                      "load_peak_rss_bytes": peak_rss_bytes()}))


def pss_of_tree(root: int) -> dict[str, int]:
    """Proportional set size of `root` and each descendant (shared pages split among their mappers), by
    process ("pid name")."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = {}, [root]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            name = next((a.decode() for a in args if a.startswith(b"stgnn_launch") or a.startswith(b"torch.")),
                        Path(args[0].decode()).name)
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    found[f"{pid} {name}"] = int(line.split()[1]) * 1024
        except (OSError, UnicodeDecodeError):
            pass
    return found


def train(overrides: list[str], run_dir: Path) -> dict:
    """stgnn-train with `overrides`; its record, and the peak PSS of its process tree."""
    cmd = [sys.executable, "-m", "stgnn_launch.cli.train", *overrides, f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak: list = [0, {}]

    def sample() -> None:
        while proc.poll() is None:
            by_process = pss_of_tree(proc.pid)
            total = sum(by_process.values())
            if total > peak[0]:
                peak[:] = [total, by_process]
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = proc.communicate()[0]
    sampler.join()
    if proc.returncode:
        raise SystemExit(f"stgnn-train failed ({proc.returncode}):\n{output[-4000:]}")
    record = json.loads((run_dir / "results.json").read_text())
    record["node_pss_peak_bytes"] = peak[0]
    record["node_pss_peak_by_process"] = peak[1]
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=11160)
    parser.add_argument("--num-steps", type=int, default=105120)
    parser.add_argument("--steps", type=int, default=5, help="training steps per run")
    parser.add_argument("--batch", type=int, default=1, help="windows per rank and step")
    parser.add_argument("--no-checkpointing", action="store_true",
                        help="keep every activation (default: trainer.activation_checkpointing=true)")
    parser.add_argument("--child-load", action="store_true")
    args = parser.parse_args()
    if args.child_load:
        child_load(args.nodes, args.num_steps)
        return

    from stgnn_launch.data.synthetic import ensure_synthetic

    started = time.perf_counter()
    path = ensure_synthetic(CACHE / "synthetic", args.nodes, args.num_steps, 0)
    generate_s = time.perf_counter() - started
    load = json.loads(subprocess.run([sys.executable, __file__, "--child-load", "--nodes", str(args.nodes),
                                      "--num-steps", str(args.num_steps)], capture_output=True, text=True,
                                     check=True).stdout.strip().splitlines()[-1])
    series = load["series_bytes"]
    shape = [f"dataset.num_nodes={args.nodes}", f"dataset.num_steps={args.num_steps}"]
    common = [*shape, f"dataset.cache_dir={CACHE}", "model=dcrnn_pgti", f"batching.batch_size={args.batch}",
              f"trainer.max_batches_per_epoch={args.steps}", "trainer.max_eval_batches=1", "trainer.progress=false",
              f"trainer.activation_checkpointing={str(not args.no_checkpointing).lower()}"]
    with tempfile.TemporaryDirectory() as tmp:
        index = train([*common, "batching=index"], Path(tmp) / "index")
        dist = train([*common, "batching=dist_index", "gpus=2"], Path(tmp) / "dist_index")
    plan = subprocess.run([sys.executable, "-m", "stgnn_launch.cli.plan", *shape, "batching=standard"],
                          capture_output=True, text=True, cwd=tempfile.gettempdir())

    gib = 2**30
    print(f"series: {args.num_steps} steps x {args.nodes} sensors x 1 feature (speed; time of day is a computed "
          f"covariate), {series / gib:.2f} GiB float32, {path} (generated or found in {generate_s:.0f} s)")
    print(f"load (index path): {load['load_s']:.1f} s, peak RSS {load['load_peak_rss_bytes'] / gib:.2f} GiB "
          f"= {load['load_peak_rss_bytes'] / series:.3f} x series (interpreter + torch before loading: "
          f"{load['startup_rss_bytes'] / gib:.2f} GiB)")
    for name, r in (("index, 1 rank", index), ("dist_index, 2 ranks", dist)):
        e = r["epochs"][0]
        print(f"{name}: setup {r['setup_time_s']:.0f} s, {e['samples_per_s']:.1f} samples/s over {args.steps} steps "
              f"of {args.batch}/rank, rank-0 peak RSS {r['peak_rss_bytes'] / gib:.2f} GiB, node PSS peak "
              f"{r['node_pss_peak_bytes'] / gib:.2f} GiB = {r['node_pss_peak_bytes'] / series:.3f} x series, "
              f"node data bytes {r['node_data_bytes'] / gib:.2f} GiB")
        print("  at the peak: " + ", ".join(f"{name} {pss / gib:.2f} GiB"
                                            for name, pss in r["node_pss_peak_by_process"].items()))
    print(f"stgnn-plan batching=standard at this shape: exit {plan.returncode}\n{plan.stdout.strip()}")
    print(json.dumps({
        "nodes": args.nodes, "num_steps": args.num_steps, "stored_features": 1, "series_bytes": series,
        "train_steps": args.steps, "batch_per_rank": args.batch, "activation_checkpointing": not args.no_checkpointing,
        "load_s": round(load["load_s"], 2), "load_peak_rss_bytes": load["load_peak_rss_bytes"],
        "load_peak_ratio": round(load["load_peak_rss_bytes"] / series, 4),
        "node_pss_peak_bytes_1_rank": index["node_pss_peak_bytes"],
        "node_rss_ratio_1_rank": round(index["node_pss_peak_bytes"] / series, 4),
        "node_pss_peak_bytes_2_ranks": dist["node_pss_peak_bytes"],
        "node_rss_ratio_2_ranks": round(dist["node_pss_peak_bytes"] / series, 4),
        "node_data_ratio_2_ranks": round(dist["node_data_bytes"] / series, 4),
        "samples_per_s": round(index["epochs"][0]["samples_per_s"], 2),
        "samples_per_s_2_ranks": round(dist["epochs"][0]["samples_per_s"], 2),
        "setup_s": round(index["setup_time_s"], 1), "setup_s_2_ranks": round(dist["setup_time_s"], 1),
        "plan_standard_exit": plan.returncode,
    }))


if __name__ == "__main__":
    main()
