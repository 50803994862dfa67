"""Property-based tests (hypothesis) of the data path's arithmetic, over sizes no example table covers:
windowing and splitting, sharding across ranks, time sharding, and the scaler's training range."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from helpers import random_series
from stgnn_launch.data.batching import IndexedWindows, MaterializedWindows, eval_positions, take
from stgnn_launch.data.batching.schedule import TrainSchedule
from stgnn_launch.data.prepare import PrepareSpec, input_ranges, prepare, scaler_sums, window_starts
from stgnn_launch.distributed.time_shard import merged_ranges, owned_scaler_ranges, rank_blocks, to_local
from stgnn_launch.errors import UserError

PROPERTY = settings(max_examples=40, deadline=None)


@st.composite
def layouts(draw, max_steps: int = 400):
    """A series length and window/split settings (any protocol), drawn so that most are valid."""
    window, horizon = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    return dict(num_steps=draw(st.integers(window + horizon, max_steps)), window=window, horizon=horizon,
                stride=draw(st.integers(1, 5)), train_ratio=draw(st.floats(0.3, 0.8)),
                test_ratio=draw(st.floats(0.05, 0.3)), split=draw(st.sampled_from(["dcrnn", "tgcn"])),
                val_ratio_of_train=draw(st.floats(0.1, 0.4)))


def starts_of(layout: dict) -> dict[str, np.ndarray]:
    try:
        return window_starts(**layout)
    except UserError:  # too short for a window in every split: refused, not a layout to check
        assume(False)
        raise


# ---- windowing and splitting ----------------------------------------------------------------------------


@PROPERTY
@given(layouts())
def test_every_window_belongs_to_exactly_one_split(layout):
    starts = starts_of(layout)
    span, stride, t = layout["window"] + layout["horizon"], layout["stride"], layout["num_steps"]
    every = np.concatenate([starts["train"], starts["val"], starts["test"]])
    assert len(np.unique(every)) == len(every)  # no window in two splits
    assert all(len(starts[s]) >= 1 for s in ("train", "val", "test"))
    assert (every >= 0).all() and (every + span <= t).all()  # every window inside the series
    assert (np.diff(every) > 0).all()  # train, then val, then test, in time order
    if layout["split"] == "dcrnn":  # by sample: the splits are all the windows there are
        assert np.array_equal(every, np.arange((t - span) // stride + 1) * stride)
    else:  # T-GCN cuts the steps first: no window crosses into the next part
        train_steps = int(t * (1.0 - layout["test_ratio"]) + 1e-9)
        fit_steps = train_steps - round(train_steps * layout["val_ratio_of_train"])
        assert starts["train"][-1] + span <= fit_steps <= starts["val"][0]
        assert starts["val"][-1] + span <= train_steps <= starts["test"][0]


# ---- sharding across ranks ------------------------------------------------------------------------------


@PROPERTY
@given(num=st.integers(1, 300), batch_size=st.integers(1, 17), world=st.integers(1, 9), seed=st.integers(0, 99),
       epoch=st.integers(0, 5), shuffle=st.booleans())
def test_training_shards_of_any_world_size_partition_each_global_batch(num, batch_size, world, seed, epoch, shuffle):
    ranks = [TrainSchedule(num, batch_size, shuffle, seed, rank=r, world=world).train_positions(epoch) for r in range(world)]
    order = TrainSchedule(num, batch_size, shuffle, seed).epoch_order(epoch)
    assert sorted(order.tolist()) == list(range(num))
    assert len({len(batches) for batches in ranks}) == 1  # DDP: every rank takes every step
    step = batch_size * world
    for i, global_batch in enumerate(order.split(step)):
        if global_batch.numel() < world:  # dropped: not every rank would get a window
            assert i == len(ranks[0])
            continue
        union = torch.cat([batches[i] for batches in ranks])
        assert torch.equal(union, global_batch)  # disjoint slices, together the whole global batch
        assert all(batches[i].numel() >= 1 for batches in ranks)


@PROPERTY
@given(count=st.integers(0, 300), batch_size=st.integers(1, 17), world=st.integers(1, 9))
def test_evaluation_shards_of_any_world_size_partition_the_split(count, batch_size, world):
    blocks = [torch.cat(b) if b else torch.empty(0, dtype=torch.long)
              for b in (eval_positions(count, batch_size, r, world) for r in range(world))]
    assert torch.equal(torch.cat(blocks), torch.arange(count))  # each window once: no padded repeats
    for r in range(world):
        assert all(b.numel() <= batch_size for b in eval_positions(count, batch_size, r, world))


# ---- time sharding --------------------------------------------------------------------------------------


@PROPERTY
@given(layouts(), st.integers(1, 6), st.data())
def test_time_shards_partition_the_splits_and_cut_the_same_windows(layout, world, data):
    starts = starts_of(layout)
    assume(all(len(starts[s]) >= world for s in ("train", "val", "test")))
    span = layout["window"] + layout["horizon"]
    values = torch.arange(layout["num_steps"], dtype=torch.float32)  # step i holds i: a slice names its steps
    for split in ("train", "val", "test"):
        pieces = [rank_blocks(starts, r, world)[split] for r in range(world)]
        assert np.array_equal(np.concatenate(pieces), starts[split])  # contiguous blocks, each start once
    rank = data.draw(st.integers(0, world - 1))
    blocks = rank_blocks(starts, rank, world)
    loaded = merged_ranges(blocks, span)
    local_values = torch.cat([values[lo:hi] for lo, hi in loaded])  # what the rank reads
    for split, block in blocks.items():
        for g, l in zip(block, to_local(block, loaded)):
            assert torch.equal(local_values[l:l + span], values[g:g + span])


@PROPERTY
@given(layouts(), st.integers(1, 6))
def test_time_shards_scaler_pieces_partition_the_training_inputs(layout, world):
    starts = starts_of(layout)
    assume(len(starts["train"]) >= world)
    window = layout["window"]
    steps = [step for lo, hi in input_ranges(starts["train"], window) for step in range(lo, hi)]
    owned = [step for r in range(world) for lo, hi in owned_scaler_ranges(starts["train"], r, world, window)
             for step in range(lo, hi)]
    assert sorted(owned) == steps and len(set(owned)) == len(owned)


# ---- gathered batches and the scaler --------------------------------------------------------------------


@PROPERTY
@given(layouts(max_steps=200), st.integers(1, 3), st.integers(0, 1000), st.data())
def test_a_gathered_batch_is_the_slices_of_its_series(layout, features, seed, data):
    series = random_series(steps=layout["num_steps"], nodes=3, features=features, seed=seed, missing=0.05)
    spec = PrepareSpec(**{k: v for k, v in layout.items() if k != "num_steps"}, out_features=1)
    try:
        prepared = prepare(series, spec)
    except UserError:
        assume(False)
    source = IndexedWindows(prepared)
    split = data.draw(st.sampled_from(["train", "val", "test"]))
    count = source.count(split)
    positions = torch.tensor(data.draw(st.lists(st.integers(0, count - 1), min_size=1, max_size=8)))
    block, starts = source.gather(split, positions)
    x, y = source.finish((block, starts))
    w, h = prepared.window, prepared.horizon
    mean, std = prepared.scaler.mean, prepared.scaler.std
    for i, p in enumerate(positions.tolist()):
        s = int(prepared.starts[split][p])
        assert int(starts[i]) == s
        assert torch.equal(block[i], series.values[s:s + w + h])
        assert torch.equal(y[i], series.values[s + w:s + w + h, :, :1])
        assert torch.allclose(x[i, :, :, :features], (series.values[s:s + w] - mean) / std)
        assert torch.allclose(x[i, :, 0, features:], prepared.covariates[s:s + w])
    standard = MaterializedWindows(prepared)  # the field's pipeline cuts bitwise the same windows
    for a, b in zip(take(standard, split, positions), (x, y)):
        assert torch.equal(a, b)


@PROPERTY
@given(layouts(max_steps=200), st.integers(1, 3), st.booleans(), st.booleans(), st.integers(0, 1000), st.data())
def test_the_cpu_input_table_gives_bitwise_the_per_batch_finish(layout, features, nan_nulls, day_of_week, seed,
                                                                  data):
    """`index` on a CPU z-scores once into an input table; its batches are bitwise those of the per-batch
    finish (dist_index, and on a GPU), with or without a null value (NaN readings), with one or more
    covariates, whatever the window and split."""
    series = random_series(steps=layout["num_steps"], nodes=3, features=features, seed=seed, missing=0.05)
    if nan_nulls:
        series.values[series.values == 0] = float("nan")
    spec = PrepareSpec(**{k: v for k, v in layout.items() if k != "num_steps"}, out_features=1,
                       null_value=None if nan_nulls else 0.0, day_of_week=day_of_week)
    try:
        prepared = prepare(series, spec)
    except UserError:
        assume(False)
    tabled, per_batch = IndexedWindows(prepared, input_table=True), IndexedWindows(prepared)
    assert tabled.table is not None and per_batch.table is None
    split = data.draw(st.sampled_from(["train", "val", "test"]))
    positions = torch.tensor(data.draw(st.lists(st.integers(0, tabled.count(split) - 1), min_size=1, max_size=8)))
    for a, b in zip(take(tabled, split, positions), take(per_batch, split, positions)):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a.view(torch.int32), b.view(torch.int32))  # bit for bit, NaN and -0.0 included


@PROPERTY
@given(layouts(max_steps=200), st.integers(0, 1000))
def test_the_scaler_never_sees_a_step_outside_the_training_inputs(layout, seed):
    series = random_series(steps=layout["num_steps"], nodes=3, seed=seed, missing=0.05)
    spec = PrepareSpec(**{k: v for k, v in layout.items() if k != "num_steps"})
    try:
        reference = prepare(series, spec).scaler
    except UserError:
        assume(False)
    starts = spec.starts(series.num_steps)
    seen = np.zeros(series.num_steps, dtype=bool)
    for lo, hi in input_ranges(starts["train"], spec.window):
        seen[lo:hi] = True
    assert not seen[starts["train"][-1] + spec.window:].any()  # nothing after the last training input
    poisoned = series.values.clone()
    poisoned[torch.from_numpy(~seen)] = 1e6  # every step the scaler must not see
    series.values = poisoned
    scaler = prepare(series, spec).scaler
    assert torch.equal(scaler.mean, reference.mean) and torch.equal(scaler.std, reference.std)
    kept = series.values[torch.from_numpy(seen)].to(torch.float64)
    kept = kept[kept != 0]  # 0 is the null value: missing readings are not statistics
    assert torch.allclose(scaler.mean.double(), kept.mean(), atol=1e-4)
    sums = scaler_sums(series.values, input_ranges(starts["train"], spec.window), spec.null_value)
    assert int(sums[2].sum()) == kept.numel()
