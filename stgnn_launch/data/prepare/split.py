"""Window start indices per split, in time order: DCRNN's split by sample or T-GCN's by time step."""

from __future__ import annotations

import numpy as np

from stgnn_launch.config.schema import SplitProtocol, one_of
from stgnn_launch.errors import UserError

SPLITS = ("train", "val", "test")


def window_count(num_steps: int, span: int, stride: int) -> int:
    """Windows of `span` = W + H steps, `stride` apart, in `num_steps` steps (0 when none fits): the one count
    of the split, the planner and the batching modes' memory terms."""
    return max(0, (num_steps - span) // stride + 1)


def split_starts(num_steps: int, window: int, horizon: int, stride: int,
                 train_ratio: float, test_ratio: float) -> dict[str, np.ndarray]:
    """Window start indices per split, in time order, counted by sample as DCRNN does.

    n = (T - (W + H)) // stride + 1 samples; test = round(test_ratio n), train = round(train_ratio n),
    val = the rest. Python's round (half to even) is what DCRNN's generate_training_data uses.
    """
    span = window + horizon
    if num_steps < span:
        raise UserError(f"series length: expected at least batching.window + batching.horizon = {span} steps, "
                        f"found {num_steps}")
    n = window_count(num_steps, span, stride)
    num_test = round(n * test_ratio)
    num_train = round(n * train_ratio)
    num_val = n - num_test - num_train
    if min(num_train, num_val, num_test) < 1:
        raise UserError(
            f"split of {n} windows: expected at least one window in each of train/val/test, found "
            f"train={num_train} val={num_val} test={num_test} (use a longer series or other ratios)"
        )
    starts = np.arange(n, dtype=np.int64) * stride
    return {
        "train": starts[:num_train],
        "val": starts[num_train:num_train + num_val],
        "test": starts[num_train + num_val:],
    }


def split_starts_tgcn(num_steps: int, window: int, horizon: int, stride: int,
                      test_ratio: float, val_ratio_of_train: float) -> dict[str, np.ndarray]:
    """Window start indices per split, T-GCN's way: the TIME STEPS are cut, then windows inside each part.

    T-GCN (Zhao et al. 2019, `preprocess_data`) keeps the first int((1 - test_ratio) T) steps for
    training and the rest for testing, and cuts samples inside each part, so that no window crosses
    the boundary. Model selection needs a validation part that is not the test: here it is the last
    round(val_ratio_of_train * train_steps) steps of the training part, cut the same way. Every part
    yields (part_steps - (W + H)) // stride + 1 windows (T-GCN's loop drops the last one; we keep it).
    """
    span = window + horizon
    train_steps = int(num_steps * (1.0 - test_ratio) + 1e-9)  # T-GCN: int(time_len * rate)
    val_steps = round(train_steps * val_ratio_of_train)
    bounds = {"train": (0, train_steps - val_steps), "val": (train_steps - val_steps, train_steps),
              "test": (train_steps, num_steps)}
    starts = {split: np.arange(lo, hi - span + 1, stride, dtype=np.int64) for split, (lo, hi) in bounds.items()}
    if min(len(v) for v in starts.values()) < 1:
        sizes = ", ".join(f"{k}={hi - lo} steps" for k, (lo, hi) in bounds.items())
        raise UserError(f"tgcn split of {num_steps} steps: expected at least window + horizon = {span} steps in "
                        f"each of train/val/test, found {sizes} (use a longer series or other ratios)")
    return starts


def window_starts(num_steps: int, *, window: int, horizon: int, stride: int, train_ratio: float,
                  test_ratio: float, split: str = "dcrnn", val_ratio_of_train: float = 0.2) -> dict[str, np.ndarray]:
    """Window starts per split under the chosen protocol (see split_starts and split_starts_tgcn)."""
    if split == "dcrnn":
        return split_starts(num_steps, window, horizon, stride, train_ratio, test_ratio)
    if split == "tgcn":
        return split_starts_tgcn(num_steps, window, horizon, stride, test_ratio, val_ratio_of_train)
    raise UserError(f"dataset.split: expected {one_of(SplitProtocol)}, found {split!r}")


def input_ranges(starts: np.ndarray, window: int) -> list[tuple[int, int]]:
    """The steps the windows' inputs cover, [s, s + W) for each start s, as merged ranges in time order.

    The scaler is fitted on exactly these steps: with a stride larger than the window, the steps between
    two training inputs are never seen by the model, so they do not enter its statistics either."""
    ranges: list[tuple[int, int]] = []
    for s in np.sort(np.asarray(starts, dtype=np.int64)):
        lo, hi = int(s), int(s) + window
        if ranges and lo <= ranges[-1][1]:
            ranges[-1] = (ranges[-1][0], max(hi, ranges[-1][1]))
        else:
            ranges.append((lo, hi))
    return ranges


def clip_ranges(ranges: list[tuple[int, int]], lo: int, hi: int) -> list[tuple[int, int]]:
    """`ranges` intersected with [lo, hi)."""
    return [(max(a, lo), min(b, hi)) for a, b in ranges if min(b, hi) > max(a, lo)]
