"""Batching strategies behind one interface: where windows come from, and which rank sees which.

A window is a start index s: input steps s .. s+W-1, target steps s+W .. s+W+H-1.

* `standard`   materializes every (x, y) window of every split up front: the field's usual pipeline,
               kept as the memory baseline. The series itself is dropped afterwards.
* `index`      keeps the series once and cuts each batch with one vectorized gather from its starts.
* `dist_index` the same cut over a copy shared by the ranks of a node (see stgnn_launch.distributed), each
               rank taking a disjoint shard of the window starts.

Whatever the mode, rank r of R sees the same schedule: each epoch one permutation of the training
windows drawn from seed + epoch (identical on every rank), cut into global batches of R x batch_size
windows, of which rank r takes the r-th slice. Evaluation windows are split into R contiguous blocks,
so every window is evaluated exactly once (no padded repeats). With R = 1 and the same seed, all three
modes therefore yield bitwise identical batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol

import torch

from stgnn_launch.data.prepare import Prepared

Batch = tuple[torch.Tensor, torch.Tensor]
MODES = ("standard", "index", "dist_index")


class WindowCutter:
    """Cuts (x, y) for a batch of start indices with one gather per tensor, no per-sample Python."""

    def __init__(self, prepared: Prepared, device: torch.device) -> None:
        self.values = prepared.values
        self.covariates = prepared.covariates.to(device)
        self.mean = prepared.scaler.mean.to(device)
        self.std = prepared.scaler.std.to(device)
        self.offsets_in = torch.arange(prepared.window, device=device)
        self.offsets_out = torch.arange(prepared.window, prepared.window + prepared.horizon, device=device)
        self.out_features = prepared.out_features

    def cut(self, starts: torch.Tensor) -> Batch:
        """x: B x W x N x (F + C) z-scored readings then covariates; y: B x H x N x F_out raw readings."""
        b = starts.shape[0]
        _, n, f = self.values.shape
        starts = starts.to(self.values.device)
        t_in = (starts[:, None] + self.offsets_in).reshape(-1)
        t_out = (starts[:, None] + self.offsets_out).reshape(-1)
        w, h = self.offsets_in.numel(), self.offsets_out.numel()
        readings = (self.values.index_select(0, t_in).view(b, w, n, f) - self.mean) / self.std
        covariates = self.covariates.index_select(0, t_in).view(b, w, 1, -1).expand(b, w, n, -1)
        x = torch.cat([readings, covariates], dim=-1)
        y = self.values.index_select(0, t_out).view(b, h, n, f)[..., : self.out_features].contiguous()
        return x, y


class WindowSource(Protocol):
    """Where the windows of a split live; `take` returns the batch of the given window positions."""

    data_bytes: int

    def count(self, split: str) -> int: ...

    def take(self, split: str, positions: torch.Tensor) -> Batch: ...


class IndexedWindows:
    """`index` / `dist_index`: one copy of the series, windows cut on demand."""

    def __init__(self, prepared: Prepared, device: torch.device) -> None:
        self.cutter = WindowCutter(prepared, device)
        self.starts = {k: torch.from_numpy(v) for k, v in prepared.starts.items()}
        self.data_bytes = _nbytes(prepared.values) + _nbytes(prepared.covariates)

    def count(self, split: str) -> int:
        return self.starts[split].numel()

    def take(self, split: str, positions: torch.Tensor) -> Batch:
        return self.cutter.cut(self.starts[split][positions])


class MaterializedWindows:
    """`standard`: every window of every split copied out up front (W + H copies of each step)."""

    def __init__(self, prepared: Prepared, device: torch.device, chunk: int = 1024) -> None:
        cutter = WindowCutter(prepared, device)
        self.windows: dict[str, Batch] = {}
        for split, starts in prepared.starts.items():
            starts_t = torch.from_numpy(starts)
            x0, y0 = cutter.cut(starts_t[:1])
            # Preallocate and fill in chunks: the peak is the windows themselves, not twice them.
            x = torch.empty((len(starts),) + x0.shape[1:], dtype=x0.dtype, device=x0.device)
            y = torch.empty((len(starts),) + y0.shape[1:], dtype=y0.dtype, device=y0.device)
            for i in range(0, len(starts), chunk):
                x[i:i + chunk], y[i:i + chunk] = cutter.cut(starts_t[i:i + chunk])
            self.windows[split] = (x, y)
        self.data_bytes = sum(_nbytes(x) + _nbytes(y) for x, y in self.windows.values())

    def count(self, split: str) -> int:
        return self.windows[split][0].shape[0]

    def take(self, split: str, positions: torch.Tensor) -> Batch:
        x, y = self.windows[split]
        positions = positions.to(x.device)
        return x.index_select(0, positions), y.index_select(0, positions)


@dataclass
class Batcher:
    """The schedule: which window positions rank `rank` of `world` gets, batch by batch."""

    source: WindowSource
    batch_size: int
    eval_batch_size: int
    shuffle: bool
    seed: int
    rank: int = 0
    world: int = 1
    max_train_batches: int | None = None  # time-sharded ranks: the step count every rank can take

    def epoch_order(self, epoch: int) -> torch.Tensor:
        n = self.source.count("train")
        if not self.shuffle:
            return torch.arange(n)
        generator = torch.Generator().manual_seed(self.seed + epoch)  # same on every rank
        return torch.randperm(n, generator=generator)

    def train_positions(self, epoch: int) -> list[torch.Tensor]:
        """This rank's slice of each global batch; a last global batch too small to give every rank a
        window is dropped, since DDP needs every rank to take every step."""
        order = self.epoch_order(epoch)
        step = self.batch_size * self.world
        shards = []
        for i in range(0, order.numel(), step):
            global_batch = order[i:i + step]
            if global_batch.numel() < self.world:
                break
            shards.append(torch.tensor_split(global_batch, self.world)[self.rank])
        return shards[: self.max_train_batches]

    def eval_positions(self, split: str) -> list[torch.Tensor]:
        block = torch.tensor_split(torch.arange(self.source.count(split)), self.world)[self.rank]
        return list(torch.split(block, self.eval_batch_size))

    def train_batches(self, epoch: int) -> Iterator[Batch]:
        for positions in self.train_positions(epoch):
            yield self.source.take("train", positions)

    def eval_batches(self, split: str) -> Iterator[Batch]:
        for positions in self.eval_positions(split):
            yield self.source.take(split, positions)


def build_source(mode: str, prepared: Prepared, device: torch.device) -> WindowSource:
    if mode == "standard":
        return MaterializedWindows(prepared, device)
    return IndexedWindows(prepared, device)


def place_series(values: torch.Tensor, on_gpu: bool) -> torch.Tensor:
    """GPU if asked; else pinned host memory when CUDA exists (fast async copies), else as it is."""
    if on_gpu:
        return values.to("cuda")
    if torch.cuda.is_available():
        return values.pin_memory()
    return values


def _nbytes(t: torch.Tensor) -> int:
    return t.element_size() * t.nelement()

