"""Every batch of `index`, and of `dist_index` (union over ranks), equals `standard` bitwise; the feed
prefetches in order, reuses its staging buffers, and never copies the series."""

import threading

import pytest
import torch

from helpers import random_series, shared_file
from stgnn_launch.data.batching import (TrainSchedule, BatchFeed, IndexedWindows, MaterializedWindows, build_source,
                                        eval_positions, take)
from stgnn_launch.data.prepare import PrepareSpec, prepare

CPU = torch.device("cpu")


def prepared_from(series, **overrides):
    args = dict(window=12, horizon=12, stride=1, train_ratio=0.7, test_ratio=0.2, null_value=0.0, day_of_week=True)
    args.update(overrides)
    return prepare(series, PrepareSpec(**args))


def synthetic_series(tmp_path):
    from stgnn_launch.data.readers.hdf5_native import read_native
    from stgnn_launch.data.synthetic import generate_synthetic

    return read_native(generate_synthetic(tmp_path / "syn.h5", num_nodes=12, num_steps=900, seed=3))


def losloop_series():
    from stgnn_launch.data.readers import load_series

    return load_series(shared_file("los-loop/los_speed.csv"), start="2012-03-01T00:00", freq="5min")


def batches(source, batcher, epoch, prefetch=False):
    feed = BatchFeed(source, CPU, batcher.batch_size, prefetch=prefetch)
    # the feed reuses its buffers: keep copies of what it hands out
    return [(x.clone(), y.clone()) for x, y in feed.batches("train", batcher.train_positions(epoch))]


def eval_batches(source, split, batch_size, rank=0, world=1):
    return [take(source, split, p) for p in eval_positions(source.count(split), batch_size, rank, world)]


def assert_same_batches(prepared, batch_size=16, world=2, seed=5):
    standard = MaterializedWindows(prepared, CPU)
    index = IndexedWindows(prepared, CPU)  # the per-batch finish: dist_index, and any finish on a GPU
    tabled = build_source("index", prepared, CPU)  # index on a CPU: inputs from the table built at load
    assert tabled.table is not None
    n = index.count("train")
    schedule = TrainSchedule(n, batch_size * world, True, seed)
    ranks = [TrainSchedule(n, batch_size, True, seed, rank=r, world=world) for r in range(world)]
    for epoch in (1, 2):
        expected = batches(standard, schedule, epoch)
        assert len(expected) > 3
        got = batches(index, schedule, epoch, prefetch=True)
        got_tabled = batches(tabled, schedule, epoch, prefetch=True)
        per_rank = [batches(index, b, epoch, prefetch=True) for b in ranks]
        assert len(got) == len(expected) and all(len(p) == len(expected) for p in per_rank)
        assert len(got_tabled) == len(expected)
        for i, (x, y) in enumerate(expected):
            assert torch.equal(got[i][0], x) and torch.equal(got[i][1], y)
            assert torch.equal(got_tabled[i][0], x) and torch.equal(got_tabled[i][1], y)
            union_x = torch.cat([p[i][0] for p in per_rank])
            union_y = torch.cat([p[i][1] for p in per_rank])
            assert torch.equal(union_x, x) and torch.equal(union_y, y)
    for split in ("val", "test"):
        expected_x = torch.cat([x for x, _ in eval_batches(standard, split, 32)])
        expected_y = torch.cat([y for _, y in eval_batches(standard, split, 32)])
        union = [b for r in range(world) for b in eval_batches(index, split, 32, r, world)]  # rank 0's block first
        assert torch.equal(torch.cat([x for x, _ in union]), expected_x)
        assert torch.equal(torch.cat([y for _, y in union]), expected_y)
        assert torch.equal(torch.cat([x for x, _ in eval_batches(tabled, split, 32)]), expected_x)
        assert torch.equal(torch.cat([y for _, y in eval_batches(tabled, split, 32)]), expected_y)
        assert expected_x.shape[0] == len(prepared.starts[split])  # every window exactly once


def test_batches_equal_on_random_series():
    assert_same_batches(prepared_from(random_series(steps=700, nodes=6)))


def test_batches_equal_on_synthetic(tmp_path):
    assert_same_batches(prepared_from(synthetic_series(tmp_path)), world=3)


def test_batches_equal_on_real_losloop():
    assert_same_batches(prepared_from(losloop_series()), batch_size=32)


def test_batches_equal_with_two_measured_features():
    assert_same_batches(prepared_from(random_series(steps=500, nodes=5, features=2)), world=3)


def test_window_contents():
    series = random_series(steps=300, nodes=4)
    raw = series.values.clone()
    prepared = prepared_from(series, day_of_week=False)
    x, y = take(IndexedWindows(prepared, CPU), "train", torch.tensor([0, 17]))
    assert x.shape == (2, 12, 4, 2) and y.shape == (2, 12, 4, 1)
    mean, std = prepared.scaler.mean, prepared.scaler.std
    assert torch.equal(x[1, :, :, 0], (raw[17:29, :, 0] - mean) / std)
    assert torch.equal(y[1], raw[29:41])  # targets stay raw: metrics are on real units
    tod = prepared.covariates[17:29, 0]
    assert torch.equal(x[1, :, 2, 1], tod)


def test_one_gather_of_w_plus_h_rows_per_window():
    """The host side of a batch is one contiguous block of W + H steps per start, straight from the series."""
    series = random_series(steps=400, nodes=5, features=2)
    prepared = prepared_from(series)
    source = IndexedWindows(prepared, CPU)
    block, starts = source.gather("val", torch.tensor([3, 0]))
    assert block.shape == (2, 24, 5, 2) and block.is_contiguous()
    first = int(prepared.starts["val"][3])
    assert torch.equal(block[0], series.values[first:first + 24]) and starts[0].item() == first


def test_standard_materializes_every_window_and_costs_w_plus_h_copies():
    series = random_series(steps=2000, nodes=10)
    prepared = prepared_from(series, day_of_week=False)
    standard = MaterializedWindows(prepared, CPU)
    index = IndexedWindows(prepared, CPU)
    n = sum(len(s) for s in prepared.starts.values())
    assert standard.data_bytes == n * (12 * 10 * 2 + 12 * 10 * 1) * 4
    assert index.data_bytes == 2000 * 10 * 4 + 2000 * 1 * 4
    assert index.data_bytes / standard.data_bytes < 0.05


def test_dist_shards_are_disjoint_and_cover_the_epoch():
    n = len(prepared_from(random_series(steps=900, nodes=3)).starts["train"])
    shards = [TrainSchedule(n, 10, True, 0, rank=r, world=4).train_positions(3) for r in range(4)]
    seen = torch.cat([torch.cat(s) for s in shards])
    assert len(set(seen.tolist())) == seen.numel()  # disjoint
    assert seen.numel() >= n - 3  # only a last global batch smaller than the world may be dropped
    assert not torch.equal(torch.cat(TrainSchedule(n, 10, True, 0).train_positions(4)),
                           torch.cat(TrainSchedule(n, 10, True, 0).train_positions(3)))


def test_unshuffled_order_is_time_order():
    n = len(prepared_from(random_series(steps=400, nodes=3)).starts["train"])
    assert torch.equal(torch.cat(TrainSchedule(n, 8, False, 0).train_positions(1)), torch.arange(n))


# ---- the feed ---------------------------------------------------------------------------------------

def test_prefetch_keeps_order_and_equals_no_prefetch():
    prepared = prepared_from(random_series(steps=600, nodes=4))
    source = IndexedWindows(prepared, CPU)
    batcher = TrainSchedule(source.count("train"), 7, True, 3)
    plain = batches(source, batcher, 1, prefetch=False)
    ahead = batches(source, batcher, 1, prefetch=True)
    assert len(plain) == len(ahead) > 10
    for (x0, y0), (x1, y1) in zip(plain, ahead):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)


def test_prefetch_gathers_in_a_background_thread_into_reused_buffers():
    prepared = prepared_from(random_series(steps=600, nodes=4))
    source = IndexedWindows(prepared, CPU)
    threads, targets = [], []
    gather = source.gather

    def spy(split, positions, out=None):
        threads.append(threading.current_thread().name)
        parts = gather(split, positions, out)
        targets.append(parts[0].data_ptr())
        return parts

    source.gather = spy
    feed = BatchFeed(source, CPU, 8, prefetch=True, depth=2)
    positions = TrainSchedule(source.count("train"), 8, True, 0).train_positions(1)
    count = sum(1 for _ in feed.batches("train", positions))
    assert count == len(positions) > 6
    assert set(threads) == {"stgnn-batch-feed"}  # never on the training thread
    ring = {slot[0].data_ptr() for slot in feed.ring.slots}
    assert set(targets) <= ring and len(set(targets)) == 3  # depth + 1 buffers, reused round-robin
    assert feed.wait_s >= 0


def test_feed_never_copies_the_series():
    """The feed only reads the series: its storage is the one prepare got, and it is never pinned."""
    series = random_series(steps=500, nodes=4)
    prepared = prepared_from(series)
    source = IndexedWindows(prepared, CPU)
    assert source.values.data_ptr() == series.values.data_ptr()
    before = series.values.clone()
    feed = BatchFeed(source, CPU, 8, prefetch=True)
    for _ in feed.batches("train", TrainSchedule(source.count("train"), 8, True, 0).train_positions(1)):
        pass
    assert source.values.data_ptr() == series.values.data_ptr() and not series.values.is_pinned()
    assert torch.equal(series.values, before)
    if not torch.cuda.is_available():
        assert not any(t.is_pinned() for slot in feed.ring.slots for t in slot)  # plain buffers on CPU


def test_an_error_in_the_producer_reaches_the_consumer():
    prepared = prepared_from(random_series(steps=400, nodes=3))
    source = IndexedWindows(prepared, CPU)

    def broken(split, positions, out=None):
        raise RuntimeError("disk gone")

    source.gather = broken
    feed = BatchFeed(source, CPU, 8, prefetch=True)
    with pytest.raises(RuntimeError, match="disk gone"):
        list(feed.batches("train", TrainSchedule(source.count("train"), 8, True, 0).train_positions(1)))


def test_a_consumer_that_stops_early_leaves_no_thread_behind():
    prepared = prepared_from(random_series(steps=600, nodes=3))
    source = IndexedWindows(prepared, CPU)
    feed = BatchFeed(source, CPU, 4, prefetch=True)
    for i, _ in enumerate(feed.batches("train", TrainSchedule(source.count("train"), 4, True, 0).train_positions(1))):
        if i == 2:
            break
    assert not [t for t in threading.enumerate() if t.name == "stgnn-batch-feed"]
    assert feed.ring.free.qsize() == len(feed.ring.slots)  # every staging buffer returned


def test_resident_bfloat16_series_gives_float32_batches_close_to_float32():
    series = random_series(steps=400, nodes=4)
    full = prepared_from(series)
    half = full.with_values(series.values.to(torch.bfloat16))
    x32, y32 = take(IndexedWindows(full, CPU), "test", torch.arange(5))
    x16, y16 = take(IndexedWindows(half, CPU), "test", torch.arange(5))
    assert x16.dtype == y16.dtype == torch.float32
    assert torch.allclose(y16, y32, rtol=1e-2) and torch.allclose(x16, x32, atol=0.1)


def test_evaluation_batches_larger_than_training_ones_fit_the_feed():
    prepared = prepared_from(random_series(steps=600, nodes=4))
    source = IndexedWindows(prepared, CPU)
    feed = BatchFeed(source, CPU, 8, prefetch=True)  # staging for 8, evaluation asks for 40 at once
    got = [x.clone() for x, _ in feed.batches("test", eval_positions(source.count("test"), 40))]
    expected = [x for x, _ in eval_batches(source, "test", 40)]
    assert len(got) == len(expected) and all(torch.equal(a, b) for a, b in zip(got, expected))


def test_index_on_a_cpu_gathers_only_target_rows_and_counts_its_input_table():
    prepared = prepared_from(random_series(steps=2000, nodes=10), day_of_week=False)
    tabled = build_source("index", prepared, CPU)
    plain = IndexedWindows(prepared, CPU)
    assert tabled.part_shapes(4) == [((4, 12, 10, 1), torch.float32), ((4,), torch.int64)]  # H rows, not W + H
    assert tabled.data_bytes == plain.data_bytes + 2000 * 10 * 2 * 4  # the T x N x (F + C) table, counted
    assert tabled.series_bytes == plain.series_bytes  # the series itself: untouched, raw
    block, starts = tabled.gather("train", torch.tensor([5]))
    assert torch.equal(block[0], prepared.values[17:29]) and int(starts[0]) == 5
    with pytest.raises(ValueError, match="input table"):
        tabled.to(torch.device("meta"))  # a device finish needs the raw inputs: such a source is built without it
    # on a GPU run (finish on the device) and for dist_index, no table: the per-batch finish
    assert build_source("index", prepared, CPU, torch.device("meta")).table is None
    assert build_source("dist_index", prepared, CPU).table is None


def test_the_input_table_is_capped(monkeypatch):
    import stgnn_launch.data.batching.windows as windows

    monkeypatch.setattr(windows, "INPUT_TABLE_MAX_BYTES", 1000)
    prepared = prepared_from(random_series(steps=300, nodes=4))
    source = build_source("index", prepared, CPU)
    assert source.table is None and source.part_shapes(2)[0][0] == (2, 24, 4, 1)


@pytest.mark.parametrize("mode", ["standard", "index", "dist_index"])
def test_a_modes_planned_bytes_are_what_its_source_holds(mode):
    """The planner's bytes of a mode (data/batching/modes.py) against the window source it builds, on a CPU:
    standard's windows, index's series + covariates + input table, dist_index's series + covariates."""
    from types import SimpleNamespace

    from stgnn_launch.data.batching import DataGeometry, batching_mode

    series = random_series(steps=500, nodes=6, features=2)
    prepared = prepared_from(series, stride=2)
    t, n, f = series.values.shape
    c = prepared.covariates.shape[-1]
    geometry = DataGeometry(steps=t, nodes=n, features=f, covariates=c, out_features=prepared.out_features,
                            window=12, horizon=12, stride=2, resident_steps=t, itemsize=4)
    kind = batching_mode(mode)
    source = build_source(mode, prepared, CPU)
    assert sum(source.count(s) for s in ("train", "val", "test")) == geometry.windows == (500 - 24) // 2 + 1
    cpu = SimpleNamespace(data_on_gpu=False, node_shared=False, cuda=False)
    held = sum(term.host_rank for term in kind.data_terms(geometry, cpu) if term.phase == "both")
    assert held == source.data_bytes
    if mode == "standard":
        assert kind.data_bytes(geometry) == source.data_bytes and not kind.keeps_series
    else:
        assert kind.data_bytes(geometry) == source.series_bytes == t * n * f * 4 and kind.keeps_series
    assert kind.shards_ranks == (mode == "dist_index") and kind.materialises_windows == (mode == "standard")
