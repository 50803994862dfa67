"""What a running job tells its user: rank 0's messages on stdout and in `train.log`, per-epoch metrics in
`metrics.csv` as they happen (and TensorBoard when asked), and a progress line every few seconds when
there is no terminal to draw a progress bar on.
"""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path
from typing import Any

from stgnn_launch.errors import UserError

from stgnn_launch.rundir import LOG, METRICS, DatasetFacts  # noqa: E402


class RunLog:
    def __init__(self, run_dir: Path, is_main: bool, tensorboard: bool = False, log_every_s: float = 30.0) -> None:
        self.is_main = is_main
        self.run_dir = Path(run_dir)
        self.log_every_s = log_every_s
        self.interactive = sys.stderr.isatty()
        self._last_progress = time.monotonic()
        self._file = None
        self._writer = None
        if is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._file = open(self.run_dir / LOG, "a", buffering=1)  # line-buffered: tail -f shows it live
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter
                except ImportError:
                    raise UserError("trainer.tensorboard: expected the tensorboard package (pip install "
                                    "'stgnn-launch[tensorboard]' or tensorboard), found it missing") from None
                self._writer = SummaryWriter(str(self.run_dir / "tensorboard"))

    def info(self, message: str) -> None:
        """Rank 0: print and append to train.log."""
        if not self.is_main:
            return
        print(message, flush=True)
        if self._file is not None:
            self._file.write(message + "\n")

    def progress_due(self) -> bool:
        """A progress line is due (no terminal, log_every_s since the last)."""
        if not self.is_main or self.interactive:
            return False
        now = time.monotonic()
        if now - self._last_progress >= self.log_every_s:
            self._last_progress = now
            return True
        return False

    def start_epochs(self, rows: list[dict[str, Any]]) -> None:
        """metrics.csv as training (re)starts: the rows of the epochs it continues from (a resume's), none
        otherwise. Rows of an earlier run in this directory, or of an epoch past the checkpoint a resume
        continues from, would read as this run's."""
        if not self.is_main:
            return
        path = self.run_dir / METRICS
        path.unlink(missing_ok=True)
        for row in rows:
            self.epoch(row, tensorboard=False)

    def epoch(self, row: dict[str, Any], tensorboard: bool = True) -> None:
        """One row of metrics.csv per epoch, flushed at once; the header from the first row's keys."""
        if not self.is_main:
            return
        path = self.run_dir / METRICS
        new = not path.is_file() or path.stat().st_size == 0
        with open(path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(row), extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)
        if self._writer is not None and tensorboard:
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    self._writer.add_scalar(key, value, row["epoch"])
            self._writer.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def missing_line(facts: DatasetFacts, null_value: float | None) -> str:
    """The start-up block's share of readings treated as missing, and why (run facts: missing_readings,
    filled_readings = the NaN/inf ones, readings)."""
    missing, filled, readings = facts.missing_readings, facts.filled_readings or 0, facts.readings or 0
    if missing is None:  # counted on rank 0, which prints the block
        return "counted on rank 0"
    line = f"{missing:,} of {readings:,} readings ({100 * missing / max(1, readings):.1f}%)"
    if null_value is None:
        return line + f": {filled:,} NaN or infinite (dataset.null_value=null: every finite reading is real)"
    line += f": {missing - filled:,} equal to dataset.null_value={null_value:g}, {filled:,} NaN or infinite"
    if missing - filled:
        line += f" (set dataset.null_value=null if a {null_value:g} is a real reading)"
    return line


def model_label(model: Any) -> str:
    """The model's name, or the class a by-import-path model brings (model.target, model.cell)."""
    path = model.target or model.cell
    return f"{path} (model={model.name})" if path else model.name


def base_note(model: Any) -> str:
    """How a network on a fitted baseline (model.base) says so; nothing for a bare one."""
    base = getattr(model, "base_name", None)
    return f", learning a correction to {base} (model.base)" if base else ""


def epochs_line(trainer: Any) -> str:
    if trainer.max_epochs != "auto":
        return f"{trainer.max_epochs}, early stopping after {trainer.patience} without a better validation MAE"
    return (f"auto: until {trainer.patience} epochs bring no better validation MAE, or after "
            f"{trainer.budget_s / 60:g} min (trainer.time_budget_min)")


def startup_block(facts: dict[str, Any]) -> str:
    """One aligned block of what this run is, printed by rank 0 before the first batch."""
    width = max(len(k) for k in facts) + 1
    lines = ["stgnn-launch run"] + [f"  {(k + ':'):<{width}} {v}" for k, v in facts.items()]
    return "\n".join(lines)
