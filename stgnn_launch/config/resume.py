"""Which config changes a resume may bring (README "Resuming"): the rule is one list, checked before anything
is written in the run directory.

A checkpoint holds weights of one model shape trained on one dataset, split, scaler and optimiser: a change
to any of those would fail to load or, worse, load and mix two experiments in one history. Allowed are the
keys that only say how long to go on, where and with how many processes, and what to log or report."""

from __future__ import annotations

from dataclasses import asdict
from enum import StrEnum
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from stgnn_launch.config.load import RUN_CONFIG, as_written, to_config
from stgnn_launch.config.schema import Config
from stgnn_launch.errors import UserError


class ResumeRefused(UserError):
    """The run directory is a finished or interrupted run of its own: a refusal leaves it as it was."""

    keep_run_dir = True

# A key is allowed to change if it equals one of these or lies under one ending in ".".
HARMLESS = (
    "trainer.max_epochs", "trainer.time_budget_min", "trainer.patience", "trainer.resume", "trainer.log_every_s", "trainer.progress",
    "trainer.tensorboard", "trainer.save_predictions", "trainer.checkpoint_every_min", "trainer.max_eval_batches",
    "trainer.pooled_steps", "trainer.num_threads", "batching.prefetch", "batching.prefetch_depth",
    "batching.device", "batching.eval_batch_size", "metrics.", "launcher.", "gpus", "run_dir",
)


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}{key}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: str(value) if isinstance(value, StrEnum) else value}  # a choice: its plain string


def harmless(key: str) -> bool:
    return any(key == h or (h.endswith(".") and key.startswith(h)) for h in HARMLESS)


def changed_keys(old: Config, new: Config) -> list[tuple[str, Any, Any]]:
    """(key, the run's value, the new value) for every key that differs and may not."""
    a, b = flatten(asdict(old)), flatten(asdict(new))
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and not harmless(k)]


def check_resume(new: Config, run_dir: Path) -> None:
    """With trainer.resume=true in a run directory that has a config: refuse a change its checkpoint cannot
    carry, naming the keys (a run directory without one starts afresh, as before)."""
    path = Path(run_dir) / RUN_CONFIG
    if not new.trainer.resume or not path.is_file():
        return
    try:
        old = to_config(as_written(OmegaConf.load(path)))
    except UserError as err:
        raise ResumeRefused(f"trainer.resume: expected the run's own {path} to be readable, found: {err}") from None
    changes = changed_keys(old, new)
    if changes:
        shown = ", ".join(f"{k} ({a!r} -> {b!r})" for k, a, b in changes[:6]) + (" ..." if len(changes) > 6 else "")
        raise ResumeRefused(f"trainer.resume: expected the run's config except for epochs, patience, logging, "
                        f"launcher and ranks, found changed {shown}; start a new run directory instead")
