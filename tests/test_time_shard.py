"""batching.shard=time: each rank reads only its steps, the scaler stays global, every window is used once."""

import json
import subprocess
import sys

import numpy as np
import pytest

from helpers import TINY
from stgnn_launch.data.prepare import split_starts
from stgnn_launch.data.prepare import input_ranges
from stgnn_launch.distributed.time_shard import merged_ranges, owned_scaler_ranges, rank_blocks, to_local


def test_blocks_ranges_and_local_indices():
    starts = split_starts(1000, 12, 12, 1, 0.7, 0.2)
    covered = []
    for rank in range(3):
        blocks = rank_blocks(starts, rank, 3)
        ranges = merged_ranges(blocks, 24)
        local = {k: to_local(v, ranges) for k, v in blocks.items()}
        steps = np.concatenate([np.arange(lo, hi) for lo, hi in ranges])
        for split in blocks:
            # a local window start points at the same global step, and its whole window is loaded
            assert np.array_equal(steps[local[split]], blocks[split])
            assert local[split].max() + 24 <= len(steps)
        covered.extend(owned_scaler_ranges(starts["train"], rank, 3, 12))
    # the owned training ranges partition the training inputs' range [0, last start + W)
    assert covered[0][0] == 0 and covered[-1][1] == int(starts["train"][-1]) + 12
    assert all(covered[i][1] == covered[i + 1][0] for i in range(len(covered) - 1))


@pytest.mark.parametrize("stride", [1, 5, 30, 41])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_scaler_pieces_partition_the_training_inputs_for_any_stride(stride, world):
    """With a stride larger than W + H the steps between windows are never training inputs; the ranks'
    pieces still partition exactly the unsharded scaler's steps, and each lies inside what the rank loaded."""
    starts = split_starts(2000, 12, 12, stride, 0.7, 0.2)
    expected = set(s for lo, hi in input_ranges(starts["train"], 12) for s in range(lo, hi))
    seen = []
    for rank in range(world):
        pieces = owned_scaler_ranges(starts["train"], rank, world, 12)
        loaded = merged_ranges(rank_blocks(starts, rank, world), 24)
        for lo, hi in pieces:
            assert any(a <= lo and hi <= b for a, b in loaded)
            seen.extend(range(lo, hi))
    assert len(seen) == len(set(seen)) and set(seen) == expected
    assert max(expected) < starts["val"][0] + 12 or stride == 1  # nothing from validation enters


def test_too_many_ranks_is_a_clear_error():
    from stgnn_launch.errors import UserError

    starts = split_starts(60, 12, 12, 1, 0.7, 0.2)
    with pytest.raises(UserError, match="at least one val window per rank"):
        rank_blocks(starts, 0, 8)


@pytest.mark.slow
def test_two_ranks_with_time_shards_train_and_cover_the_test_set(tmp_path):
    def run(name, *overrides):
        cmd = [sys.executable, "-m", "stgnn_launch.cli.train", *TINY, "trainer.max_epochs=1",
               f"hydra.run.dir={tmp_path / name}", *overrides]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return json.loads((tmp_path / name / "results.json").read_text())

    sharded = run("sharded", "gpus=2", "batching=dist_index", "batching.shard=time")
    whole = run("whole", "gpus=1", "batching=index")
    assert sharded["world_size"] == 2 and sharded["dataset"]["time_shard"]
    assert sharded["dataset"]["num_steps"] < whole["dataset"]["num_steps"]  # rank 0 read only its part
    # every test window evaluated exactly once across the two ranks
    assert sharded["test"]["avg"]["count"] == whole["test"]["avg"]["count"]
    assert np.isfinite(sharded["test"]["avg"]["mae"])
