"""The defaults a new user trains with (`stgnn-train dataset=X`, nothing else) must beat persistence.

The measured margins on every dataset are in benchmarks/RESULTS.md, "Defaults against persistence"; here
the two cheap ones (the quick start's synthetic set and chickenpox) are trained for real, and the
composed defaults that those measurements rest on are pinned, so that a change to them is a deliberate one.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import compose_config, shared_file
from stgnn_launch.train.run import run_training


def train_defaults(run_dir: Path, *dataset: str) -> dict:
    cfg = compose_config(*dataset, "trainer.progress=false")  # progress off only: it changes no number
    cfg.run_dir = str(run_dir)
    return run_training(cfg, run_dir)


@pytest.mark.slow
@pytest.mark.parametrize("dataset, data_file", [
    ((), None),  # the quick start: synthetic, generated on first use
    (("dataset=chickenpox",), "chickenpox/chickenpox.json"),
])
def test_default_settings_beat_persistence(tmp_path, dataset, data_file):
    if data_file is not None:
        shared_file(data_file)  # skips where ../shared/data is absent
    record = train_defaults(tmp_path, *dataset)
    model_mae = record["test"]["avg"]["mae"]
    persistence_mae = record["baselines"]["persistence"]["avg"]["mae"]
    assert record["beats_persistence"] is True, (model_mae, persistence_mae)
    assert model_mae < 0.9 * persistence_mae  # measured: 0.67x (synthetic), 0.55x (chickenpox)


def test_defaults_are_the_measured_ones_and_overrides_still_win():
    synthetic = compose_config()
    assert (synthetic.trainer.lr, synthetic.trainer.max_epochs) == (0.01, 2)  # the quick start stays short
    losloop = compose_config("dataset=losloop")
    assert (losloop.trainer.lr, losloop.trainer.max_epochs, losloop.batching.batch_size) == (0.01, 10, 16)
    assert (losloop.dataset.name, losloop.dataset.freq) == ("losloop", "5min")
    overridden = compose_config("dataset=losloop", "trainer.max_epochs=3", "batching.batch_size=64")
    assert (overridden.trainer.max_epochs, overridden.batching.batch_size) == (3, 64)
    preset = compose_config("experiment=losloop")  # a preset still sets its own protocol over the dataset's
    assert (preset.trainer.max_epochs, preset.trainer.lr, preset.batching.batch_size) == (20, 0.002, 16)
