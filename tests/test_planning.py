"""The planning package: one function per decision, the estimate reads the same Layout the ranks take,
the device side has its margins, and the modules import each other one way only."""

import ast
from pathlib import Path

import pytest

from helpers import compose_config
from stgnn_launch.distributed.context import RankEnv
from stgnn_launch.planning.estimate import GPU_USABLE_SHARE, estimate_memory
from stgnn_launch.planning.fit import DoesNotFit, check_fits, estimate_for, settle_batch_size
from stgnn_launch.planning.machine import Machine
from stgnn_launch.planning.plan import make_plan
from stgnn_launch.planning.probe import ActivationProfile

ONE_H100 = Machine(cores=16, gpus=1, gpu_memory_bytes=80 * 2**30)
EIGHT_GPUS = Machine(cores=64, gpus=8, gpu_memory_bytes=80 * 2**30)
PEMS_TWO = (105120, 11160, 2)
PROFILE = ActivationProfile(per_sample_node=20_000.0, fixed=(0.0, 0.0, 0.0), params=(100_000.0, 0.0))


def test_default_auto_on_one_80gib_gpu_counts_the_series_on_the_device():
    """The plan puts a year of PeMS (two features, 8.7 GiB) on the GPU; the estimate counts it there too."""
    cfg = compose_config("dataset.num_nodes=11160", "dataset.num_steps=105120")
    plan = make_plan(compose_config("dataset.num_nodes=11160", "dataset.num_steps=105120", "batching.batch_size=8"),
                     RankEnv(), ONE_H100, lambda: PEMS_TWO)
    assert plan.data_device.type == "cuda"
    estimate = estimate_for(cfg, PEMS_TWO, ONE_H100, PROFILE)
    series = 105120 * 11160 * 2 * 4
    on_gpu = [t for t in estimate.terms if t.name == "resident series (on each GPU)"]
    assert [t.device_rank for t in on_gpu] == [series]
    assert estimate.device_rank_peak > series and estimate.layout.data_device == plan.data_device
    assert not any(t.host_rank == series and t.phase == "both" for t in estimate.terms)  # no host copy kept


def test_gpu_node_shares_one_host_copy_and_counts_the_device_margins():
    cfg = compose_config("batching=dist_index", "batching.device=gpu", "gpus=8", "batching.batch_size=16")
    estimate = estimate_memory(cfg, (52116, 325, 1), EIGHT_GPUS, PROFILE, 16)
    names = {t.name: t for t in estimate.terms}
    assert names["resident series (node-shared)"].host_node == 52116 * 325 * 4  # once per node, not 8x
    assert names["resident series (on each GPU)"].device_rank == 52116 * 325 * 4
    for margin in ("CUDA context, cuBLAS workspace", "DDP gradient buckets", "NCCL buffers"):
        assert names[margin].device_rank > 0, margin
    assert estimate.device_limit == int(GPU_USABLE_SHARE * 80 * 2**30)  # not 100% of the card
    assert estimate.device_tensor_peak < estimate.device_rank_peak  # the context and NCCL are not tensors


def test_slurm_gpu_memory_refuses_a_run_before_it_is_queued():
    big = ("launcher=slurm", "gpus=4", "launcher.gpus_per_node=4", "dataset.num_nodes=11160",
           "dataset.num_steps=105120", "batching=dist_index", "batching.device=gpu", "batching.batch_size=64",
           "model=dcrnn_pgti")
    with pytest.raises(DoesNotFit, match="DOES NOT FIT"):
        check_fits(compose_config(*big, "launcher.gpu_mem_gb=8"))
    assert check_fits(compose_config(*big, "launcher.gpu_mem_gb=141")).fits


def test_the_launcher_settles_auto_for_slurm_too():
    cfg = compose_config("launcher=slurm", "gpus=8", "launcher.gpus_per_node=4", "launcher.gpu_mem_gb=80")
    assert cfg.batching.batch_size == "auto"
    settle_batch_size(cfg)
    assert cfg.batching.batch_size == 64  # written into config.yaml: every rank reads this number


ORDER = ["machine", "layout", "probe", "estimate", "fit", "plan"]


@pytest.mark.parametrize("module", ORDER)
def test_planning_modules_import_only_those_below_them(module):
    """machine < layout < probe < estimate < fit < plan, at module level and inside functions alike."""
    tree = ast.parse((Path(__file__).resolve().parents[1] / "stgnn_launch" / "planning" / f"{module}.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    planning = {m.removeprefix("stgnn_launch.planning.") for m in imported if m.startswith("stgnn_launch.planning.")}
    assert planning <= set(ORDER[:ORDER.index(module)]), planning
    assert not {"stgnn_launch.plan", "stgnn_launch.memory"} & imported


def test_the_probe_forks_the_cpu_generator_only(monkeypatch):
    """fork_rng() without devices=[] touches every visible GPU and warns on multi-GPU ranks; the probe's random
    batches are drawn on the CPU alone."""
    import torch

    from stgnn_launch.planning.probe import probe_activations

    seen = []
    original = torch.random.fork_rng
    monkeypatch.setattr(torch.random, "fork_rng", lambda *a, **k: (seen.append(k.get("devices")), original(*a, **k))[1])
    state = torch.get_rng_state()
    probe_activations(compose_config("model.params.hidden=4"), 2, 1)
    assert seen == [[]] and torch.equal(torch.get_rng_state(), state)  # the caller's random state is kept
