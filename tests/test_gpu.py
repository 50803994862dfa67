"""The CUDA paths: run wherever CUDA is present, skipped cleanly without it."""

import os
import socket

import pytest
import torch

from helpers import TINY, compose_config, random_series
from stgnn_launch.data.batching import Batcher, BatchFeed, IndexedWindows, MaterializedWindows, take
from stgnn_launch.data.prepare import PrepareSpec, prepare

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
CUDA = torch.device("cuda", 0)


def test_staged_feed_gives_the_cpu_batches_and_never_pins_the_series():
    series = random_series(steps=800, nodes=6)
    prepared = prepare(series, PrepareSpec())
    source = IndexedWindows(prepared, torch.device("cpu"), CUDA)
    feed = BatchFeed(source, CUDA, 16, prefetch=True)
    positions = Batcher(source.count("train"), 16, True, 0).train_positions(1)
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
