"""The plan: every choice decided once from the config and the machine (no GPU needed to test them)."""

import pytest
import torch

from helpers import compose_config
from stgnn_launch.distributed.context import RankEnv
from stgnn_launch.errors import UserError
from stgnn_launch.planning.layout import estimated_data_bytes
from stgnn_launch.planning.machine import Machine
from stgnn_launch.planning.plan import make_plan

CPU_NODE = Machine(cores=16, gpus=0)
GPU_NODE = Machine(cores=32, gpus=4, gpu_memory_bytes=80 * 2**30)
RANK1_OF_4 = RankEnv(rank=1, local_rank=1, world_size=4, local_world_size=4)


def plan(*overrides, env=RankEnv(), machine=CPU_NODE, shape=(52116, 325, 1)):
    """A rank's plan from a config as stgnn-train writes it (the automatic batch already a number)."""
    return make_plan(compose_config("batching.batch_size=64", *overrides), env, machine, lambda: shape)


def test_cpu_ranks_share_the_cores_and_the_series():
    p = plan("batching=dist_index", env=RANK1_OF_4)
    assert p.compute_device == torch.device("cpu") and p.backend == "gloo"
    assert p.threads == 4 and p.node_shared and p.shard == "index"
    assert p.data_device == torch.device("cpu") and p.prefetch


def test_gpu_ranks_get_the_cores_per_gpu_and_their_own_device():
    p = plan("batching=dist_index", env=RANK1_OF_4, machine=GPU_NODE)
    assert p.compute_device == torch.device("cuda", 1) and p.backend == "nccl"
    assert p.threads == 8  # 32 cores / 4 GPUs, not 1


def test_auto_puts_the_series_on_the_gpu_when_it_fits():
    small = plan("batching=index", machine=GPU_NODE)
    assert small.data_device == torch.device("cuda", 0) and not small.prefetch  # gathered on the GPU
    pems = plan("batching=index", machine=Machine(cores=16, gpus=1, gpu_memory_bytes=16 * 2**30),
                shape=(105120, 11160, 2))  # 9.4 GB of float32 > half of a 16 GB GPU
    assert pems.data_device == torch.device("cpu") and pems.prefetch
    assert "too large" in " ".join(pems.notes)


def test_gpu_resident_series_is_copied_from_the_node_shared_one_and_cpu_request_is_honoured():
    p = plan("batching=dist_index", "batching.device=gpu", env=RANK1_OF_4, machine=GPU_NODE)
    assert p.data_device.type == "cuda" and p.node_shared  # one host copy per node, each GPU's copy made from it
    assert "shared host copy" in " ".join(p.notes)
    assert plan("batching=index", "batching.device=cpu", machine=GPU_NODE).data_device.type == "cpu"
    assert plan("batching=index", "batching.device=gpu").data_device.type == "cpu"  # no GPU here: noted
    assert plan("batching=index", "launcher.cpu=true", machine=GPU_NODE).compute_device.type == "cpu"


def test_standard_estimate_counts_every_window():
    cfg = compose_config("batching=standard")
    windows = 52116 - 24 + 1
    assert estimated_data_bytes(cfg, (52116, 325, 1)) == windows * (12 * 325 * 2 + 12 * 325) * 4
    assert estimated_data_bytes(compose_config("batching=index", "batching.dtype=bfloat16"), (100, 10, 2)) == 4000


def test_global_batch_is_fixed_across_world_sizes_with_lr_scaling():
    p = plan("batching=dist_index", "batching.global_batch_size=256", "trainer.lr_scaling=linear",
             "trainer.lr=0.001", "gpus=4", env=RANK1_OF_4)
    assert (p.batch_size, p.global_batch_size) == (64, 256) and p.lr == pytest.approx(0.004)
    assert plan("batching.batch_size=32", env=RANK1_OF_4).global_batch_size == 128
    with pytest.raises(UserError, match="batching.global_batch_size: expected a multiple of gpus=3"):
        compose_config("batching.global_batch_size=100", "gpus=3")


def test_time_shards_schedule_alone_and_resident_precision():
    p = plan("batching=dist_index", "batching.shard=time", env=RANK1_OF_4)
    assert p.shard == "time" and (p.schedule_rank, p.schedule_world) == (0, 1) and not p.node_shared
    assert plan("batching.dtype=bfloat16").series_dtype == torch.bfloat16


def test_more_local_ranks_than_gpus_is_refused_under_nccl_and_shared_round_robin_under_gloo():
    rank5 = RankEnv(rank=5, local_rank=5, world_size=8, local_world_size=8)
    with pytest.raises(UserError, match="gpus: expected at most 4 ranks per node"):
        plan(env=rank5, machine=GPU_NODE)
    p = plan("launcher.backend=gloo", env=rank5, machine=GPU_NODE)
    assert p.backend == "gloo" and p.compute_device == torch.device("cuda", 1)


def test_auto_batch_is_decided_by_the_launcher_not_by_each_rank():
    with pytest.raises(UserError, match="batching.batch_size: expected a number in the run's config.yaml"):
        make_plan(compose_config("batching.batch_size=auto"), RANK1_OF_4, GPU_NODE, lambda: (52116, 325, 1))
    single = make_plan(compose_config("batching.batch_size=auto"), RankEnv(), CPU_NODE, lambda: (4032, 80, 1))
    assert single.batch_size == 64  # one process may still size itself
