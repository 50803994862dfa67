"""Every batch of `index`, and of `dist_index` (union over ranks), equals `standard` bitwise."""

import torch

from helpers import random_series, shared_file
from stgnn_launch.data.batching import Batcher, IndexedWindows, MaterializedWindows, WindowCutter, place_series
from stgnn_launch.data.prepare import prepare

CPU = torch.device("cpu")


def prepared_from(series, **overrides):
    args = dict(window=12, horizon=12, stride=1, train_ratio=0.7, test_ratio=0.2, null_value=0.0,
                day_of_week=True)
    args.update(overrides)
    return prepare(series, **args)


def synthetic_series(tmp_path):
    from stgnn_launch.data.readers.hdf5_native import read_native
    from stgnn_launch.data.synthetic import generate_synthetic

    return read_native(generate_synthetic(tmp_path / "syn.h5", num_nodes=12, num_steps=900, seed=3))


def losloop_series():
    from stgnn_launch.data.readers import load_series

    return load_series(shared_file("los-loop/los_speed.csv"), start="2012-03-01T00:00", freq="5min")


def assert_same_batches(prepared, batch_size=16, world=2, seed=5):
    standard = Batcher(MaterializedWindows(prepared, CPU), batch_size * world, 32, True, seed)
    index = Batcher(IndexedWindows(prepared, CPU), batch_size * world, 32, True, seed)
    ranks = [Batcher(IndexedWindows(prepared, CPU), batch_size, 32, True, seed, rank=r, world=world)
             for r in range(world)]
    for epoch in (1, 2):
        expected = list(standard.train_batches(epoch))
        assert len(expected) > 3
        got = list(index.train_batches(epoch))
        per_rank = [list(b.train_batches(epoch)) for b in ranks]
        assert len(got) == len(expected) and all(len(p) == len(expected) for p in per_rank)
        for i, (x, y) in enumerate(expected):
            assert torch.equal(got[i][0], x) and torch.equal(got[i][1], y)
            union_x = torch.cat([p[i][0] for p in per_rank])
            union_y = torch.cat([p[i][1] for p in per_rank])
            assert torch.equal(union_x, x) and torch.equal(union_y, y)
    for split in ("val", "test"):
        expected_x = torch.cat([x for x, _ in standard.eval_batches(split)])
        expected_y = torch.cat([y for _, y in standard.eval_batches(split)])
        union = [b for r in ranks for b in r.eval_batches(split)]  # rank 0's block, then rank 1's
        assert torch.equal(torch.cat([x for x, _ in union]), expected_x)
        assert torch.equal(torch.cat([y for _, y in union]), expected_y)
        assert expected_x.shape[0] == len(prepared.starts[split])  # every window exactly once


def test_batches_equal_on_random_series():
    assert_same_batches(prepared_from(random_series(steps=700, nodes=6)))


def test_batches_equal_on_synthetic(tmp_path):
    assert_same_batches(prepared_from(synthetic_series(tmp_path)), world=3)


def test_batches_equal_on_real_losloop():
    assert_same_batches(prepared_from(losloop_series()), batch_size=32)


def test_window_contents():
    series = random_series(steps=300, nodes=4)
    raw = series.values.clone()
    prepared = prepared_from(series, day_of_week=False)
    x, y = WindowCutter(prepared, CPU).cut(torch.tensor([0, 17]))
    assert x.shape == (2, 12, 4, 2) and y.shape == (2, 12, 4, 1)
    mean, std = prepared.scaler.mean, prepared.scaler.std
    assert torch.equal(x[1, :, :, 0], (raw[17:29, :, 0] - mean) / std)
    assert torch.equal(y[1], raw[29:41])  # targets stay raw: metrics are on real units
    tod = prepared.covariates[17:29, 0]
    assert torch.equal(x[1, :, 2, 1], tod)


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
    prepared = prepared_from(random_series(steps=900, nodes=3))
    source = IndexedWindows(prepared, CPU)
    shards = [Batcher(source, 10, 10, True, 0, rank=r, world=4).train_positions(3) for r in range(4)]
    seen = torch.cat([torch.cat(s) for s in shards])
    n = len(prepared.starts["train"])
    assert len(set(seen.tolist())) == seen.numel()  # disjoint
    assert seen.numel() >= n - 3  # only a last global batch smaller than the world may be dropped
    other_epoch = Batcher(source, 10, 10, True, 0).train_positions(4)
    assert not torch.equal(torch.cat(other_epoch), torch.cat(Batcher(source, 10, 10, True, 0).train_positions(3)))


def test_unshuffled_order_is_time_order():
    prepared = prepared_from(random_series(steps=400, nodes=3))
    order = torch.cat(Batcher(IndexedWindows(prepared, CPU), 8, 8, False, 0).train_positions(1))
    assert torch.equal(order, torch.arange(len(prepared.starts["train"])))


def test_series_stays_pageable_without_cuda():
    values = torch.ones(5, 2, 1)
    placed = place_series(values, on_gpu=False)
    if not torch.cuda.is_available():
        assert placed is values and not placed.is_pinned()
    else:
        assert placed.is_pinned()
