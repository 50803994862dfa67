"""dist_index's node-shared copy: two real gloo ranks map the same /dev/shm pages, nothing is left behind."""

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from helpers import compose_config

pytestmark = pytest.mark.slow


def mapping_of(address: int) -> str:
    """The file backing the memory at `address` in this process (from /proc/self/maps)."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        start, end = (int(v, 16) for v in parts[0].split("-"))
        if start <= address < end:
            return parts[5] if len(parts) > 5 else ""
    return ""


def rank_main(rank: int, world: int, port: int, cfg, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from stgnn_launch.data.datasets import load_dataset
    from stgnn_launch.distributed.context import RankEnv, barrier, init_distributed, shutdown
    from stgnn_launch.distributed.shared_series import load_node_shared
    from stgnn_launch.planning.layout import prepare_spec

    ctx = init_distributed(RankEnv.from_environ(), torch.device("cpu"), "gloo")
    series, stats = load_node_shared(cfg.dataset, prepare_spec(cfg), torch.float32, ctx, cfg.run_dir)
    reference = load_dataset(cfg.dataset)
    barrier(ctx)
    Path(out_dir, f"rank{rank}.txt").write_text("\n".join([
        mapping_of(series.values.data_ptr()),
        str(torch.equal(series.values, reference.values)),
        str(series.sensor_ids == reference.sensor_ids),
        str(bool((series.adjacency == reference.adjacency).all())),
        str(stats.scaler_sums[2].item()),
    ]))
    barrier(ctx)
    shutdown(ctx)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ranks_of_a_node_map_one_shared_copy(tmp_path):
    cfg = compose_config("dataset.num_nodes=9", "dataset.num_steps=500", "batching=dist_index")
    cfg.run_dir = str(tmp_path)
    mp.spawn(rank_main, args=(2, free_port(), cfg, str(tmp_path)), nprocs=2, join=True)
    reports = [Path(tmp_path, f"rank{r}.txt").read_text().splitlines() for r in range(2)]
    for mapping, same_values, same_ids, same_graph, _ in reports:
        assert mapping.startswith("/dev/shm/stgnn_")  # the values live in shared memory ...
        assert mapping.endswith("(deleted)")  # ... whose name is already unlinked: nothing can leak
        assert (same_values, same_ids, same_graph) == ("True", "True", "True")
    assert reports[0][0] == reports[1][0]  # ... and it is the same segment on both ranks
    assert reports[0][4] == reports[1][4] and float(reports[0][4]) > 0  # statistics computed once, shared
    assert not [p for p in os.listdir("/dev/shm") if p.startswith("stgnn_")]


def pipeline_rank(rank: int, world: int, port: int, cfg, out_dir: str) -> None:
    """A rank's whole data path as training builds it (plan -> node-shared load -> window source), the path GPU
    ranks take too: their device copy is made from the same shared view (IndexedWindows: values.to(device))."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from stgnn_launch.distributed.context import RankEnv, barrier, init_distributed, shutdown
    from stgnn_launch.planning.machine import Machine
    from stgnn_launch.planning.plan import make_plan
    from stgnn_launch.train.run import build_pipeline, data_bytes_held

    env = RankEnv.from_environ()
    plan = make_plan(cfg, env, Machine(cores=2, gpus=0))
    ctx = init_distributed(env, plan.compute_device, plan.backend)
    pipe = build_pipeline(cfg, plan, ctx)
    held = data_bytes_held(plan, ctx, pipe)
    barrier(ctx)
    Path(out_dir, f"pipe{rank}.txt").write_text("\n".join([
        str(plan.node_shared), mapping_of(pipe.source.values.data_ptr()), str(held["host_data_bytes_per_rank"]),
        str(held["host_data_bytes_per_node"]), str(pipe.source.series_bytes)]))
    barrier(ctx)
    shutdown(ctx)


def test_the_window_source_reads_the_shared_copy_without_a_private_one(tmp_path):
    cfg = compose_config("dataset.num_nodes=50", "dataset.num_steps=500", "batching=dist_index", "gpus=2",
                         "batching.batch_size=8", "launcher.cpu=true")
    cfg.run_dir = str(tmp_path)
    mp.spawn(pipeline_rank, args=(2, free_port(), cfg, str(tmp_path)), nprocs=2, join=True)
    reports = [Path(tmp_path, f"pipe{r}.txt").read_text().splitlines() for r in range(2)]
    for shared, mapping, host_rank, host_node, series in reports:
        assert shared == "True" and mapping.startswith("/dev/shm/stgnn_")  # the batches are cut from shared pages
        assert int(host_rank) < int(series) // 10  # per rank: the small covariates table, no copy of the series
        assert int(host_node) == int(series) + 2 * int(host_rank)  # the series once per node
    assert reports[0][1] == reports[1][1]
