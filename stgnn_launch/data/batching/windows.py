"""Where the windows of a split come from, as two steps: `gather` on the host (or where the data lives)
and `finish` on the compute device.

A window is a start index s: input steps s .. s+W-1, target steps s+W .. s+W+H-1.

* `IndexedWindows` (index, dist_index) keeps the series once. `gather` cuts a batch with ONE row gather
  of the W + H consecutive steps of every start into a contiguous block (B x (W+H) x N x F raw
  readings, in the series' resident dtype) plus the starts: the least a batch can cost, one pass at
  memory-copy speed, and one contiguous host-to-device copy. `finish` then, on the device, z-scores the
  inputs, appends the covariates (looked up from the starts in a T x C table on the device, so they
  are never copied to every node on the host) and takes the targets as a view of the block.
  When `finish` runs on the CPU as well (a CPU run of `index`), the z-score and the covariates are applied
  ONCE, at load, into a T x N x (F + C) float32 table of model inputs (`input_table=True`, what
  `build_source` asks for in mode `index`): a batch is then one row gather of its W input rows from
  that table and one of its H raw target rows from the series, with no per-batch arithmetic. The table
  holds the values the per-batch finish would compute, element by element with the same float32
  operations, so batches stay bitwise equal; the series itself stays raw (targets and the null mask
  exact, the node-shared copy of `dist_index` untouched). It costs T x N x (F + C) x 4 bytes per process,
  counted in `data_bytes` and capped by `INPUT_TABLE_MAX_BYTES` (above: the per-batch finish).
* `MaterializedWindows` (standard) copies every finished (x, y) window of every split out up front:
  the field's usual pipeline, kept as the memory baseline. Its `gather` picks rows, `finish` passes.

Both give the model x: B x W x N x (F + C) float32 and y: B x H x N x F_out float32 raw readings, and
for the same positions the two are bitwise equal (standard is built by the same `finish`).
"""

from __future__ import annotations

from typing import Protocol

import torch

from stgnn_launch.data.prepare import Prepared
from stgnn_launch.data.prepare.missing import chunk_steps

INPUT_TABLE_MAX_BYTES = 2**30  # a larger CPU input table is not built: the per-batch finish runs instead
Parts = tuple[torch.Tensor, ...]  # what `gather` produces and the feed moves to the device
Batch = tuple[torch.Tensor, torch.Tensor]  # (x, y) as the model and the metrics see them


class WindowSource(Protocol):
    data_bytes: int  # bytes of series or windows this rank holds
    data_device: torch.device

    def count(self, split: str) -> int: ...

    def part_shapes(self, batch_size: int) -> list[tuple[tuple[int, ...], torch.dtype]]: ...

    def gather(self, split: str, positions: torch.Tensor, out: Parts | None = None) -> Parts: ...

    def finish(self, parts: Parts) -> Batch: ...

    def to(self, device: torch.device) -> None: ...


def take(source: WindowSource, split: str, positions: torch.Tensor) -> Batch:
    """The finished batch of `positions` (no prefetching): tests, tools and evaluation helpers."""
    return source.finish(source.gather(split, positions))


class Finisher:
    """The device side of the index path: z-score, covariates, targets. Small tables, copied per device."""

    def __init__(self, prepared: Prepared, device: torch.device) -> None:
        self.window, self.horizon = prepared.window, prepared.horizon
        self.out_features = prepared.out_features
        self.scaler = prepared.scaler.to(device)  # its divisor on the device: GPU batches bitwise as CPU ones
        self.covariates = prepared.covariates.to(device)
        self.offsets = torch.arange(prepared.window, device=device)
        # NaN marks a missing reading only where the dataset has no null value; inputs then read 0 (the mean)
        self.zero_nan_inputs = prepared.null_value is None

    def to(self, device: torch.device) -> "Finisher":
        for name in ("covariates", "offsets", "scaler"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def __call__(self, block: torch.Tensor, starts: torch.Tensor) -> Batch:
        """One pass per channel straight into the model input: z-scored readings with scalar statistics
        (a broadcast over a last axis of 1 or 2 features runs unvectorised), then the covariates."""
        b, _, n, f = block.shape
        c = self.covariates.shape[-1]
        x = torch.empty((b, self.window, n, f + c), device=block.device)
        self._inputs(block[:, : self.window], x)
        if c:
            steps = starts.to(self.offsets.device)[:, None] + self.offsets  # B x W
            x[..., f:] = self.covariates[steps].view(b, self.window, 1, c)
        y = block[:, self.window:, :, : self.out_features].float()
        return x, y

    def _inputs(self, inputs: torch.Tensor, x: torch.Tensor) -> None:
        """x[..., :F] = the z-scored `inputs` (... x F), channel by channel: the one definition of the
        model's input values, shared by the per-batch finish and the input table."""
        f = inputs.shape[-1]
        if inputs.dtype != torch.float32:  # a reduced-precision series: z-score in float32, not in bf16
            inputs = inputs.float()
        self.scaler.transform_channels(inputs, x)
        if self.zero_nan_inputs:
            x[..., :f] = x[..., :f].nan_to_num(nan=0.0)

    def input_table(self, values: torch.Tensor, chunk_steps: int) -> torch.Tensor:
        """T x N x (F + C) float32: every step's model input (z-scored readings, then its covariates),
        computed once, `chunk_steps` steps at a time, with the same operations as `__call__`."""
        t, n, f = values.shape
        c = self.covariates.shape[-1]
        table = torch.empty((t, n, f + c), device=values.device)
        for first in range(0, t, chunk_steps):
            last = min(t, first + chunk_steps)
            self._inputs(values[first:last], table[first:last])
            if c:
                table[first:last, :, f:] = self.covariates[first:last, None, :].to(values.device)
        return table


class IndexedWindows:
    """`index` / `dist_index`: one copy of the series, windows cut on demand."""

    def __init__(self, prepared: Prepared, data_device: torch.device | None = None,
                 compute_device: torch.device | None = None, *, input_table: bool = False) -> None:
        values = prepared.values
        self.data_device = data_device or values.device
        if values.device != self.data_device:  # the series on the GPU (batching.device=gpu): one copy
            values = values.to(self.data_device)
        t, n, f = values.shape
        self.values = values
        self.rows = values.view(t, n * f)  # a window's W+H steps are W+H consecutive rows
        self.window = prepared.window
        self.span = prepared.window + prepared.horizon
        self.offsets = torch.arange(self.span, device=self.data_device)
        self.starts = {k: torch.from_numpy(v).to(self.data_device) for k, v in prepared.starts.items()}
        compute = compute_device or self.data_device
        self.finisher = Finisher(prepared, compute)
        self.table: torch.Tensor | None = None  # T x (N (F + C)) model inputs, when `finish` runs on this CPU
        table_bytes = t * n * (f + prepared.covariates.shape[-1]) * 4
        if input_table and self.data_device.type == compute.type == "cpu" and table_bytes <= INPUT_TABLE_MAX_BYTES:
            self.table = self.finisher.input_table(values, chunk_steps(values)).view(t, -1)
        self.data_bytes = _nbytes(values) + _nbytes(prepared.covariates) + (_nbytes(self.table) if self.table is not None else 0)
        self.series_bytes = _nbytes(values)

    def count(self, split: str) -> int:
        return self.starts[split].numel()

    def part_shapes(self, batch_size: int) -> list[tuple[tuple[int, ...], torch.dtype]]:
        _, n, f = self.values.shape
        span = self.span if self.table is None else self.span - self.window  # with the table: targets only
        return [((batch_size, span, n, f), self.values.dtype), ((batch_size,), torch.int64)]

    def gather(self, split: str, positions: torch.Tensor, out: Parts | None = None) -> Parts:
        """The raw rows of each window (W + H of them; with the input table, the H target rows) and the
        starts."""
        starts = self.starts[split][positions.to(self.data_device)]
        offsets = self.offsets if self.table is None else self.offsets[self.window:]
        rows = (starts[:, None] + offsets).view(-1)
        b, span = starts.numel(), offsets.numel()
        _, n, f = self.values.shape
        if out is None or out[0].shape[0] < b:  # no staging buffer, or one too small for this batch
            block = self.rows.index_select(0, rows).view(b, span, n, f)
            return block, starts
        block_out, starts_out = out[0][:b], out[1][:b]
        torch.index_select(self.rows, 0, rows, out=block_out.view(b * span, n * f))
        starts_out.copy_(starts)
        return block_out, starts_out

    def finish(self, parts: Parts) -> Batch:
        if self.table is None:
            return self.finisher(*parts)
        targets, starts = parts  # the inputs: one row gather from the table, already z-scored with covariates
        b, _, n, _ = targets.shape
        rows = (starts[:, None] + self.offsets[: self.window]).view(-1)
        x = self.table.index_select(0, rows).view(b, self.window, n, -1)
        return x, targets[..., : self.finisher.out_features].float()

    def to(self, device: torch.device) -> None:
        """Where `finish` runs (the compute device)."""
        if self.table is not None and device.type != "cpu":
            raise ValueError(f"this window source finishes batches from a CPU input table; build it with "
                             f"compute_device={device} (or input_table=False) to finish them on {device}")
        self.finisher.to(device)


class MaterializedWindows:
    """`standard`: every window of every split copied out up front (W + H copies of each step)."""

    def __init__(self, prepared: Prepared, data_device: torch.device | None = None, chunk: int = 1024) -> None:
        index = IndexedWindows(prepared, torch.device("cpu"))
        self.windows: dict[str, Batch] = {}
        for split, starts in prepared.starts.items():
            n = len(starts)
            x0, y0 = take(index, split, torch.arange(1))
            # Preallocate and fill in chunks: the peak is the windows themselves, not twice them.
            x = torch.empty((n,) + x0.shape[1:], dtype=x0.dtype)
            y = torch.empty((n,) + y0.shape[1:], dtype=y0.dtype)
            for i in range(0, n, chunk):
                x[i:i + chunk], y[i:i + chunk] = take(index, split, torch.arange(i, min(n, i + chunk)))
            self.windows[split] = (x, y)
        self.data_device = torch.device("cpu")
        if data_device is not None and data_device.type != "cpu":  # batching.device=gpu: the windows move
            self.windows = {k: (x.to(data_device), y.to(data_device)) for k, (x, y) in self.windows.items()}
            self.data_device = data_device
        self.data_bytes = sum(_nbytes(x) + _nbytes(y) for x, y in self.windows.values())
        self.series_bytes = 0  # the field's pipeline keeps only the windows

    def count(self, split: str) -> int:
        return self.windows[split][0].shape[0]

    def part_shapes(self, batch_size: int) -> list[tuple[tuple[int, ...], torch.dtype]]:
        x, y = self.windows["train"]
        return [((batch_size,) + tuple(x.shape[1:]), x.dtype), ((batch_size,) + tuple(y.shape[1:]), y.dtype)]

    def gather(self, split: str, positions: torch.Tensor, out: Parts | None = None) -> Parts:
        x, y = self.windows[split]
        positions = positions.to(self.data_device)
        if out is None or out[0].shape[0] < positions.numel():
            return x.index_select(0, positions), y.index_select(0, positions)
        b = positions.numel()
        return (torch.index_select(x, 0, positions, out=out[0][:b]),
                torch.index_select(y, 0, positions, out=out[1][:b]))

    def finish(self, parts: Parts) -> Batch:
        return parts[0], parts[1]

    def to(self, device: torch.device) -> None:
        """Nothing to move: windows are finished where they are built."""


def _nbytes(t: torch.Tensor) -> int:
    return t.element_size() * t.nelement()
