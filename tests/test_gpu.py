"""The CUDA paths: run wherever CUDA is present, skipped cleanly without it."""

import os
import socket

import pytest
import torch

from helpers import TINY, compose_config, random_series, tiny
from stgnn_launch.data.batching import TrainSchedule, BatchFeed, IndexedWindows, MaterializedWindows, take
from stgnn_launch.data.prepare import PrepareSpec, prepare

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
CUDA = torch.device("cuda", 0)


def test_staged_feed_gives_the_cpu_batches_and_never_pins_the_series():
    series = random_series(steps=800, nodes=6)
    prepared = prepare(series, PrepareSpec())
    source = IndexedWindows(prepared, torch.device("cpu"), CUDA)
    feed = BatchFeed(source, CUDA, 16, prefetch=True)
    positions = TrainSchedule(source.count("train"), 16, True, 0).train_positions(1)
    got = [(x.cpu(), y.cpu()) for x, y in feed.batches("train", positions)]
    reference = IndexedWindows(prepared, torch.device("cpu"))
    for (x, y), pos in zip(got, positions):
        ex, ey = take(reference, "train", pos)
        assert torch.equal(x, ex) and torch.equal(y, ey)
    assert not series.values.is_pinned() and source.values.data_ptr() == series.values.data_ptr()
    assert all(t.is_pinned() for slot in feed.ring.slots for t in slot)  # only the small staging ring


@pytest.mark.parametrize("mode", ["standard", "index"])
def test_data_on_the_gpu_gathers_there(mode):
    prepared = prepare(random_series(steps=600, nodes=5), PrepareSpec())
    cls = MaterializedWindows if mode == "standard" else IndexedWindows
    source = cls(prepared, CUDA)
    x, y = take(source, "test", torch.arange(4))
    assert x.device.type == y.device.type == "cuda"
    ex, ey = take(cls(prepared, torch.device("cpu")), "test", torch.arange(4))
    assert torch.equal(x.cpu(), ex) and torch.equal(y.cpu(), ey)


@pytest.mark.parametrize("mode", ["standard", "index", "dist_index"])
def test_training_on_the_gpu_with_data_on_the_gpu(tmp_path, mode):
    from stgnn_launch.train.run import run_training

    cfg = compose_config(*TINY, f"batching={mode}", "batching.device=gpu", "trainer.max_epochs=1")
    cfg.run_dir = str(tmp_path)
    record = run_training(cfg, tmp_path)
    assert record["device"].startswith("cuda") and record["plan"]["data_device"].startswith("cuda")
    assert record["test"]["avg"]["mae"] == record["test"]["avg"]["mae"]


def test_collectives_on_cpu_tensors_under_nccl():
    """Time shards all-reduce the scaler's sums, which live on the host: under NCCL they must move."""
    import torch.distributed as dist

    from stgnn_launch.distributed.context import RankEnv, all_reduce_sum, init_distributed, shutdown

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1")
    try:
        ctx = init_distributed(RankEnv(), CUDA, "nccl", timeout_s=60)
        sums = torch.ones(3, 2, dtype=torch.float64)
        assert torch.equal(all_reduce_sum(sums, ctx), torch.ones(3, 2, dtype=torch.float64))
        assert sums.device.type == "cpu"
        shutdown(ctx)
    finally:
        for key in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE"):
            os.environ.pop(key, None)
        if dist.is_initialized():
            dist.destroy_process_group()


def test_bf16_autocast_and_compile_train(tmp_path):
    from stgnn_launch.train.run import run_training

    cfg = compose_config(*TINY, "trainer.bf16=true", "trainer.compile=true", "trainer.max_epochs=1")
    cfg.run_dir = str(tmp_path)
    record = run_training(cfg, tmp_path)
    assert record["test"]["avg"]["mae"] == record["test"]["avg"]["mae"]


def _probe(*overrides: str, model: str = "tgcn") -> dict:
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_probe.py"
    out = subprocess.run([sys.executable, str(script), "--warmup", "3", "--steps", "8", *tiny(model), *overrides],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("model, device", [("tgcn", "gpu"), ("tgcn", "cpu"), ("dcrnn", "gpu")])
def test_no_host_synchronisation_per_training_step(model, device):
    """Positions cross once per epoch, DCRNN's coins are drawn on the device, flags stay on the host."""
    result = _probe(f"batching.device={device}", model=model)
    assert result["syncs_per_step"] == 0, result


def test_the_feed_thread_works_on_the_feeds_device():
    seen = []
    prepared = prepare(random_series(steps=600, nodes=5), PrepareSpec())
    source = IndexedWindows(prepared, torch.device("cpu"), CUDA)
    gather = source.gather
    source.gather = lambda *a, **k: (seen.append(torch.cuda.current_device()), gather(*a, **k))[1]
    feed = BatchFeed(source, CUDA, 8, prefetch=True)
    positions = TrainSchedule(source.count("train"), 8, True, 0).train_positions(1)[:4]
    for _ in range(2):  # a second call reuses slots whose copies the first call put in flight
        assert len(list(feed.batches("train", positions))) == 4
    assert seen and set(seen) == {CUDA.index}


def test_deterministic_training_is_bitwise_repeatable_on_the_gpu(tmp_path):
    from stgnn_launch.train.run import run_training

    maes = []
    for name in ("a", "b"):
        cfg = compose_config(*TINY, "trainer.deterministic=true", "trainer.max_epochs=1", "batching.device=gpu")
        cfg.run_dir = str(tmp_path / name)
        maes.append(run_training(cfg, tmp_path / name)["test"])
    assert maes[0] == maes[1]
    assert os.environ.get("CUBLAS_WORKSPACE_CONFIG") == ":4096:8"


def test_record_has_device_peaks_and_data_bytes_per_device(tmp_path):
    from stgnn_launch.train.run import run_training

    cfg = compose_config(*TINY, "trainer.max_epochs=1", "batching.device=gpu")
    cfg.run_dir = str(tmp_path)
    record = run_training(cfg, tmp_path)
    assert record["device_peak_allocated_bytes"] > 0 and record["device_peak_reserved_bytes"] >= \
        record["device_peak_allocated_bytes"]
    assert record["device_data_bytes_per_rank"] > 0 and record["host_data_bytes_per_rank"] == 0
