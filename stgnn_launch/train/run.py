"""One rank's whole run: data -> split and scaler -> windows -> model -> train -> test -> results.json."""

from __future__ import annotations

import socket
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from stgnn_launch.config.schema import Config
from stgnn_launch.data.batching import Batcher, build_source, place_series
from stgnn_launch.data.datasets import load_dataset
from stgnn_launch.data.prepare import Prepared, prepare
from stgnn_launch.data.series import Series
from stgnn_launch.distributed.context import DistContext, init_distributed, shutdown
from stgnn_launch.train.metrics import MetricSums
from stgnn_launch.train.record import RESULTS, git_sha, peak_rss_bytes, write_json_atomic
from stgnn_launch.train.trainer import Trainer, make_model


def load_series_for_rank(cfg: Config, ctx: DistContext) -> Series:
    """dist_index on several ranks shares one copy per node; everything else reads its own."""
    if cfg.batching.mode == "dist_index" and ctx.local_world_size > 1:
        from stgnn_launch.distributed.shared_series import load_node_shared

        return load_node_shared(cfg, ctx)
    return load_dataset(cfg.dataset)


def prepare_for(cfg: Config, series: Series) -> Prepared:
    b, d = cfg.batching, cfg.dataset
    return prepare(series, window=b.window, horizon=b.horizon, stride=b.stride, train_ratio=d.train_ratio,
                   test_ratio=d.test_ratio, null_value=d.null_value, day_of_week=d.day_of_week,
                   split=d.split, val_ratio_of_train=d.val_ratio_of_train)


def build_pipeline(cfg: Config, ctx: DistContext) -> tuple[Prepared, Batcher, torch.nn.Module, dict[str, Any]]:
    """Everything a Trainer needs, in the order of the data path."""
    time_shard = cfg.batching.mode == "dist_index" and cfg.batching.shard == "time" and ctx.world_size > 1
    steps_per_epoch = None
    if time_shard:  # this rank's steps only; its own windows, shuffled among themselves
        from stgnn_launch.distributed.time_shard import load_time_shard

        prepared, series, steps_per_epoch = load_time_shard(cfg, ctx)
    else:
        series = load_series_for_rank(cfg, ctx)
        prepared = prepare_for(cfg, series)
    facts = {"name": cfg.dataset.name, "num_steps": series.num_steps, "num_nodes": series.num_nodes,
             "num_features": series.num_features, "start": str(series.timestamps[0]),
             "step": str(series.step), "time_shard": time_shard,
             "node_shared": cfg.batching.mode == "dist_index" and not time_shard and ctx.local_world_size > 1}
    adjacency = series.adjacency
    del series
    on_gpu = cfg.batching.device == "gpu" and ctx.device.type == "cuda"
    if cfg.batching.mode != "standard":
        prepared.values = place_series(prepared.values, on_gpu)
    model = make_model(cfg, prepared, adjacency, ctx.device)
    source = build_source(cfg.batching.mode, prepared, ctx.device if on_gpu else torch.device("cpu"))
    if cfg.batching.mode == "standard":
        # The field's pipeline keeps only the materialized windows; so does our baseline.
        prepared.values = torch.empty((0,) + tuple(prepared.values.shape[1:]))
    rank, world = (0, 1) if time_shard else (ctx.rank, ctx.world_size)
    batcher = Batcher(source, batch_size=cfg.batching.batch_size,
                      eval_batch_size=cfg.batching.eval_batch_size or cfg.batching.batch_size,
                      shuffle=cfg.batching.shuffle, seed=cfg.trainer.seed, rank=rank, world=world,
                      max_train_batches=steps_per_epoch)
    facts["windows"] = {split: len(starts) for split, starts in prepared.starts.items()}
    return prepared, batcher, model, facts


def run_training(cfg: Config, run_dir: Path) -> dict[str, Any]:
    """Train and test on this rank; rank 0 writes results.json and returns the record."""
    started = time.time()
    ctx = init_distributed(use_cuda=torch.cuda.is_available() and not cfg.launcher.cpu)
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    try:
        prepared, batcher, model, facts = build_pipeline(cfg, ctx)
        setup_time_s = time.time() - started  # process group, data load, split, scaler, windows, model
        trainer = Trainer(cfg, ctx, model, prepared, batcher, run_dir)
        trainer.fit()
        trainer.load_best()
        val_sums, test_sums = trainer.evaluate_sums("val"), trainer.evaluate_sums("test")
        test = test_sums.result()
        record = {
            "config": asdict(cfg),
            "batching": cfg.batching.mode,
            "model": cfg.model.name,
            "world_size": ctx.world_size,
            "backend": ctx.backend,
            "device": str(ctx.device),
            "dataset": facts,
            "parameters": sum(p.numel() for p in model.parameters()),
            "epochs": trainer.history,
            "best_epoch": trainer.best_epoch,
            "val": val_sums.result(),
            "test": test,
            "data_bytes": batcher.source.data_bytes,
            "node_data_bytes": node_data_bytes(facts["node_shared"], ctx, batcher.source.data_bytes, prepared),
            "peak_rss_bytes": peak_rss_bytes(),
            "setup_time_s": setup_time_s,
            "wall_time_s": time.time() - started,
            "git_sha": git_sha(),
            "host": socket.gethostname(),
        }
        if cfg.trainer.pooled_steps:
            record["val_pooled"] = pooled_by_minutes(val_sums, cfg.trainer.pooled_steps, prepared.steps_per_day)
            record["test_pooled"] = pooled_by_minutes(test_sums, cfg.trainer.pooled_steps, prepared.steps_per_day)
        if ctx.is_main:
            write_json_atomic(record, run_dir / RESULTS)
            print(format_test(test), flush=True)
            if cfg.trainer.pooled_steps:
                print(format_pooled(record["test_pooled"]), flush=True)
            print(f"results: {run_dir / RESULTS}", flush=True)
        shutdown(ctx)
        return record
    finally:
        shutdown(ctx, together=False)  # no-op after the normal end


def pooled_by_minutes(sums: MetricSums, upto_steps: list[int], steps_per_day: int) -> dict[str, dict[str, float]]:
    """T-GCN's reporting: metrics and accuracy pooled over output steps 1..k for each k, keyed by minutes
    ("15" for 3 five-minute steps)."""
    minutes = 1440 / steps_per_day
    return {f"{int(k) * minutes:g}": m for k, m in sums.pooled(upto_steps).items()}


def format_pooled(pooled: dict[str, dict[str, float]]) -> str:
    lines = ["test metrics pooled over steps 1..k (T-GCN)", f"{'minutes':>8} {'MAE':>8} {'RMSE':>8} {'acc':>8}"]
    for minutes, m in pooled.items():
        lines.append(f"{minutes:>8} {m['mae']:8.4f} {m['rmse']:8.4f} {m['acc']:8.4f}")
    return "\n".join(lines)


def node_data_bytes(node_shared: bool, ctx: DistContext, rank_bytes: int, prepared: Prepared) -> int:
    """Host memory for data on one node: a node-shared series counted once, private copies per rank."""
    ranks = ctx.local_world_size
    if node_shared:
        shared = prepared.values.element_size() * prepared.values.nelement()
        return shared + ranks * (rank_bytes - shared)
    return ranks * rank_bytes


def run_evaluation(cfg: Config, run_dir: Path, split: str) -> dict[str, Any]:
    """Metrics of the run's best checkpoint on `split` with this world size; rank 0 writes
    eval_<split>_w<world>.json. Errors and masks are summed over ranks, so any world size agrees."""
    ctx = init_distributed(use_cuda=torch.cuda.is_available() and not cfg.launcher.cpu)
    try:
        prepared, batcher, model, facts = build_pipeline(cfg, ctx)
        trainer = Trainer(cfg, ctx, model, prepared, batcher, run_dir)
        if trainer.trainable:
            trainer.load_best(required=True)
        metrics = trainer.evaluate(split)
        record = {"run_dir": str(run_dir), "split": split, "world_size": ctx.world_size, "metrics": metrics,
                  "checkpoint": str(trainer.ckpt_dir / "best.pt") if trainer.trainable else None}
        if ctx.is_main:
            write_json_atomic(record, run_dir / f"eval_{split}_w{ctx.world_size}.json")
            print(format_test(metrics).replace("test metrics", f"{split} metrics"), flush=True)
        shutdown(ctx)
        return record
    finally:
        shutdown(ctx, together=False)  # no-op after the normal end


def format_test(test: dict[str, dict[str, float]]) -> str:
    lines = ["test metrics (masked, de-normalized)", f"{'horizon':>8} {'MAE':>8} {'RMSE':>8} {'MAPE':>8}"]
    for step, m in test.items():
        lines.append(f"{step:>8} {m['mae']:8.4f} {m['rmse']:8.4f} {100 * m['mape']:7.2f}%")
    return "\n".join(lines)
