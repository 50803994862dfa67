"""Small builders shared by the tests (real data location, tiny series, tiny configs)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from stgnn_launch.data.series import Series, regular_timestamps

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_file(relative: str) -> Path:
    """A file under ../shared/data, or a clean skip where the folder is absent (a user's machine)."""
    import pytest

    path = SHARED_DATA / relative
    if not path.is_file():
        pytest.skip(f"real data file {path} is not present")
    return path


def random_series(steps: int = 600, nodes: int = 7, features: int = 1, seed: int = 0,
                  missing: float = 0.02) -> Series:
    """Speeds with a daily cycle, some readings missing (zeros) and a ring graph."""
    rng = np.random.default_rng(seed)
    t = np.arange(steps)[:, None, None]
    values = 55 + 10 * np.sin(2 * np.pi * t / 288) + rng.normal(0, 2, (steps, nodes, features))
    values[rng.random(values.shape) < missing] = 0.0
    adjacency = np.eye(nodes, dtype=np.float32) + np.roll(np.eye(nodes, dtype=np.float32), 1, axis=1) * 0.5
    return Series(torch.from_numpy(values.astype(np.float32)), regular_timestamps("2012-03-01T00:00", "5min", steps),
                  [f"s{i}" for i in range(nodes)], adjacency)


CONF_DIR = str(REPO / "stgnn_launch" / "conf")


def compose_config(*overrides: str):
    """The real Hydra composition of conf/ with the given overrides, validated into a Config."""
    from hydra import compose, initialize_config_dir

    from stgnn_launch.config.load import check_choices, to_config
    from stgnn_launch.config.schema import register_configs

    register_configs()
    check_choices(overrides)  # as the console scripts do before Hydra composes

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides))
    return to_config(cfg)


# Two epochs of the bare network unless a test says otherwise (the defaults these tests were written against,
# before max_epochs=auto and model.base=auto; the new defaults have their own tests, test_defaults_*.py).
TINY_DATA = ("dataset.num_nodes=10", "dataset.num_steps=700", "batching.batch_size=16", "trainer.progress=false",
             "trainer.max_epochs=2", "model.base=none")

# Small hyperparameters per model, so that end-to-end tests stay fast on two cores.
TINY_PARAMS = {
    "tgcn": ("model.params.hidden=8",),
    "a3tgcn": ("model.params.hidden=8",),
    "dcrnn": ("model.params.rnn_units=8",),
    "dcrnn_pgti": (),
    "gwnet": ("model.params.residual_channels=8", "model.params.dilation_channels=8",
              "model.params.skip_channels=16", "model.params.end_channels=16"),
    "persistence": (),
    "historical_average": (),
    "pyg_recurrent": ("model.params.hidden=8",),
}


def tiny(model: str = "tgcn") -> tuple[str, ...]:
    return (*TINY_DATA, f"model={model}", *TINY_PARAMS[model])


TINY = tiny("tgcn")


def is_rank_process(cmdline: list[bytes], run_dir: Path) -> bool:
    """Whether a /proc/<pid>/cmdline (split at NUL) is a rank of `run_dir`: the module python runs (-m) is the
    worker, not torchrun's agent, whose own arguments name the worker too."""
    return (b"-m" in cmdline and cmdline[cmdline.index(b"-m") + 1] == b"stgnn_launch.train.worker"
            and str(run_dir).encode() in cmdline)


def rank_process_ids(run_dir: Path) -> list[int]:
    """The pids of every live rank process of `run_dir` (scanned from /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if is_rank_process(cmdline, run_dir):
                pids.append(int(entry.name))
    return pids


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))
