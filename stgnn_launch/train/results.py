"""The run record rank 0 writes as results.json (rundir.ResultsRecord), from a finished session."""

from __future__ import annotations

import socket
import time
from dataclasses import asdict
from typing import TYPE_CHECKING

import torch

from stgnn_launch.distributed.context import DistContext
from stgnn_launch.planning.plan import Plan
from stgnn_launch.rundir import EpochStats, Metrics, PlanFacts, ResultsRecord
from stgnn_launch.train.metrics import MetricSums
from stgnn_launch.train.record import git_sha, peak_rss_bytes
from stgnn_launch.train.trainer import Trainer

if TYPE_CHECKING:  # the session builds the record; it is imported here for its type only
    from stgnn_launch.train.pipeline import Pipeline
    from stgnn_launch.train.session import Session


def make_record(session: Session, trainer: Trainer, val_sums: MetricSums, test_sums: dict[str, MetricSums],
                setup_time_s: float) -> ResultsRecord:
    """`test_sums`: the model's and each baseline's, on the same test windows."""
    cfg, plan, ctx, pipe = session.cfg, session.plan, session.ctx, session.pipe
    attempt_s = time.time() - session.started
    test = test_sums["model"].result()
    baselines = {name: s.result() for name, s in test_sums.items() if name != "model"}
    epochs = [EpochStats.from_dict(row) for row in trainer.progress.history]
    total_time = sum(e.epoch_time_s for e in epochs)
    per_rank, per_node = series_bytes(plan, ctx, pipe)
    pooled = cfg.trainer.pooled_steps
    return ResultsRecord(
        config=asdict(cfg), batching=cfg.batching.mode, model=cfg.model.name, world_size=ctx.world_size,
        backend=ctx.backend, device=str(ctx.device), plan=plan_facts(plan), dataset=pipe.facts,
        parameters=sum(p.numel() for p in pipe.model.parameters()), epochs=epochs,
        best_epoch=trainer.progress.best_epoch, val=val_sums.result(), test=test, baselines=baselines,
        mape_threshold=cfg.metrics.mape_threshold,
        data_wait_fraction=(sum(e.data_wait_s for e in epochs) / total_time) if total_time > 0 else None,
        data_bytes=pipe.source.data_bytes, node_data_bytes=node_data_bytes(plan, ctx, pipe),
        series_bytes_per_rank=per_rank, series_bytes_per_node=per_node, **data_bytes_held(plan, ctx, pipe),
        peak_rss_bytes=peak_rss_bytes(), **device_peaks(ctx), setup_time_s=setup_time_s,
        wall_time_s=trainer.checkpointer.run_wall_time_s(attempt_s),  # over every attempt of a resumed run
        attempts=trainer.checkpointer.attempt, attempt_wall_time_s=attempt_s, git_sha=git_sha(),
        host=socket.gethostname(),
        beats_persistence=(bool(test["avg"]["mae"] < baselines["persistence"]["avg"]["mae"])
                           if "persistence" in baselines else None),
        val_pooled=pooled_by_minutes(val_sums, pooled, pipe.prepared.steps_per_day) if pooled else None,
        test_pooled=pooled_by_minutes(test_sums["model"], pooled, pipe.prepared.steps_per_day) if pooled else None)


def plan_facts(plan: Plan) -> PlanFacts:
    return PlanFacts(shard=plan.shard, node_shared=plan.node_shared, data_device=str(plan.data_device),
                     series_dtype=str(plan.series_dtype).replace("torch.", ""), prefetch=plan.prefetch,
                     threads=plan.threads, batch_size=plan.batch_size, global_batch_size=plan.global_batch_size,
                     lr=plan.lr, notes=plan.notes)


def data_bytes_held(plan: Plan, ctx: DistContext, pipe: Pipeline) -> dict[str, int]:
    """Data (series or windows, covariates) really held, host and device apart, per rank and per node: a
    node-shared host copy counts once per node (also where each GPU holds its own copy made from it)."""
    held = pipe.source.data_bytes
    shared = getattr(pipe.source, "series_bytes", 0) if plan.node_shared else 0
    device = held if plan.data_on_gpu else 0
    host = 0 if plan.data_on_gpu else held - shared
    ranks = ctx.local_world_size
    return {"host_data_bytes_per_rank": host, "host_data_bytes_per_node": ranks * host + shared,
            "device_data_bytes_per_rank": device, "device_data_bytes_per_node": ranks * device}


def device_peaks(ctx: DistContext) -> dict[str, int | None]:
    """This rank's GPU memory peaks (the caching allocator's), beside the host's peak RSS."""
    cuda = ctx.device.type == "cuda"
    return {"device_peak_allocated_bytes": torch.cuda.max_memory_allocated(ctx.device) if cuda else None,
            "device_peak_reserved_bytes": torch.cuda.max_memory_reserved(ctx.device) if cuda else None}


def series_bytes(plan: Plan, ctx: DistContext, pipe: Pipeline) -> tuple[int, int]:
    """(per rank, per node) bytes of series held in host memory, or on the GPU when it lives there:
    a node-shared copy counts once per node and nothing per rank."""
    held = getattr(pipe.source, "series_bytes", 0)
    if plan.node_shared:
        return 0, held
    return held, held * ctx.local_world_size


def node_data_bytes(plan: Plan, ctx: DistContext, pipe: Pipeline) -> int:
    """Host memory for data on one node: a node-shared series counted once, private copies per rank."""
    rank_bytes = pipe.source.data_bytes
    ranks = ctx.local_world_size
    if plan.node_shared:
        shared = getattr(pipe.source, "series_bytes", 0)
        return shared + ranks * (rank_bytes - shared)
    return ranks * rank_bytes


def pooled_by_minutes(sums: MetricSums, upto_steps: list[int], steps_per_day: int | None) -> dict[str, Metrics]:
    """T-GCN's reporting: metrics and accuracy pooled over output steps 1..k for each k, keyed by minutes
    ("15" for 3 five-minute steps); by steps ("3 steps") where the step does not divide a day."""
    if steps_per_day is None:
        return {f"{k} steps": m for k, m in sums.pooled(upto_steps).items()}
    minutes = 1440 / steps_per_day
    return {f"{int(k) * minutes:g}": m for k, m in sums.pooled(upto_steps).items()}
