"""One short training run on a GPU, measured from inside: host syncs per training step, step time, and the
memory planner's device estimate against what the CUDA allocator really held.

    python benchmarks/gpu_probe.py --label index-gpu batching=index batching.device=gpu

Prints one JSON line: label, steps measured, `syncs_per_step` (synchronising CUDA calls counted by
torch.cuda.set_sync_debug_mode over the measured steps of the real Trainer loop, prefetch thread included),
`step_ms` (wall time per step, from a device-synchronised start to a device-synchronised end), the plan's
device estimate against what was held: its tensor part (`device_tensor_estimate_bytes`) against the caching
allocator's `max_allocated_bytes`, and its whole (`device_estimate_bytes`: tensors, CUDA context, cuBLAS,
NCCL) against the device's used memory at the end (`device_used_bytes`, cudaMemGetInfo: the context plus
what the allocator reserved, which it keeps), and the test MAE of the (short) run. Without CUDA, `--cpu-ok` runs the same path on the CPU (the check's dry run).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from stgnn_launch.cli.train import CONF_DIR
    from stgnn_launch.config.load import to_config
    from stgnn_launch.config.schema import register_configs

    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return to_config(hydra_compose(config_name="config", overrides=overrides))


class SyncCounter:
    """Counts synchronising CUDA calls between `on()` and `off()` (any thread), via the sync debug mode."""

    def __init__(self) -> None:
        self.count = 0
        self._catch = warnings.catch_warnings(record=True)
        self._records: list | None = None
        self.cuda = torch.cuda.is_available()

    def on(self) -> None:
        if self._records is None:
            self._records = self._catch.__enter__()
            warnings.simplefilter("always")
        if self.cuda:
            torch.cuda.set_sync_debug_mode("warn")

    def off(self) -> None:
        if self.cuda:
            torch.cuda.set_sync_debug_mode("default")
        if self._records is not None:
            self.count += sum("synchroniz" in str(w.message) for w in self._records)
            self._records.clear()

    def close(self) -> None:
        if self._records is not None:
            self._catch.__exit__(None, None, None)
            self._records = None


def probe(overrides: list[str], warmup: int, steps: int) -> dict:
    from stgnn_launch.planning.fit import plan_memory
    from stgnn_launch.train.run import build_pipeline, plan_for, _configure_device
    from stgnn_launch.distributed.context import init_distributed, shutdown
    from stgnn_launch.train.runlog import RunLog
    from stgnn_launch.train.trainer import Trainer

    cfg = compose(overrides + [f"trainer.max_batches_per_epoch={warmup + steps}", "trainer.max_epochs=1",
                               "trainer.max_eval_batches=4", "trainer.progress=false", "trainer.log_every_s=3600"])
    estimate = plan_memory(cfg)
    baseline_used = 0
    if torch.cuda.is_available():  # what other processes hold on the device (nothing of ours yet)
        free, total = torch.cuda.mem_get_info()
        baseline_used = total - free
    run_dir = Path(tempfile.mkdtemp(prefix="gpu_probe_"))
    cfg.run_dir = str(run_dir)
    plan, env = plan_for(cfg)
    _configure_device(cfg, plan)
    ctx = init_distributed(env, plan.compute_device, plan.backend, plan.dist_timeout_s)
    cuda = ctx.device.type == "cuda"
    log = RunLog(run_dir, ctx.is_main)
    pipe = build_pipeline(cfg, plan, ctx)
    trainer = Trainer(cfg, plan, ctx, pipe.model, pipe.prepared, pipe.source, pipe.batcher, run_dir, log,
                      pipe.baselines)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    counter = SyncCounter()
    timing: dict[str, float] = {}
    batches = trainer.feed.batches

    def counted(split, positions):
        if split != "train":
            yield from batches(split, positions)
            return
        for i, batch in enumerate(batches(split, positions)):
            if i == warmup:  # from the first measured step on; the warm-up steps allocate and tune
                counter.off()
                counter.count = 0
                if cuda:
                    torch.cuda.synchronize()
                timing["start"] = time.perf_counter()
                counter.on()
            yield batch
        counter.off()
        if cuda:
            torch.cuda.synchronize()
        timing["end"] = time.perf_counter()

    trainer.feed.batches = counted
    try:
        trainer.fit()
    finally:
        counter.off()
        counter.close()
    trainer.load_best()
    test = trainer.evaluate_sums("test")["model"].result()
    measured = steps
    allocated = torch.cuda.max_memory_allocated(ctx.device) if cuda else None
    reserved = torch.cuda.max_memory_reserved(ctx.device) if cuda else None
    free, total = torch.cuda.mem_get_info(ctx.device) if cuda else (None, None)
    used = total - free - baseline_used if cuda else None
    shutdown(ctx)
    log.close()
    return {
        "overrides": overrides, "device": torch.cuda.get_device_name(ctx.device) if cuda else "cpu",
        "steps": measured, "syncs_per_step": counter.count / measured,
        "step_ms": 1000 * (timing["end"] - timing["start"]) / measured,
        "data_device": str(plan.data_device), "node_shared": plan.node_shared, "batch_size": plan.batch_size,
        "device_estimate_bytes": estimate.device_rank_peak, "device_used_bytes": used,
        "device_tensor_estimate_bytes": estimate.device_tensor_peak, "max_allocated_bytes": allocated,
        "max_reserved_bytes": reserved,
        "estimate_over_allocated": (estimate.device_tensor_peak / allocated) if allocated else None,
        "estimate_over_used": (estimate.device_rank_peak / used) if used else None,
        "test_mae": test["avg"]["mae"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", default="run")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cpu-ok", action="store_true", help="run on the CPU where there is no CUDA (dry run)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() and not args.cpu_ok:
        print(json.dumps({"label": args.label, "skipped": "no CUDA device"}))
        return 0
    result = {"label": args.label, **probe(args.overrides, args.warmup, args.steps)}
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
