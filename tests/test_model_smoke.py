"""Every registered model trains (or fits) through every batching mode with finite test metrics."""

import math

import pytest

from helpers import TINY_PARAMS, compose_config, tiny
from stgnn_launch.models.registry import available_models
from stgnn_launch.train.run import run_training


def test_every_registered_model_has_tiny_test_settings():
    assert set(available_models()) == set(TINY_PARAMS)


@pytest.mark.parametrize("mode", ["standard", "index", "dist_index"])
@pytest.mark.parametrize("model", sorted(TINY_PARAMS))
def test_model_trains_through_each_batching_mode(tmp_path, model, mode):
    cfg = compose_config(*tiny(model), f"batching={mode}", "trainer.max_epochs=1", "dataset.num_steps=500",
                         "trainer.max_batches_per_epoch=4", "batching.eval_batch_size=128")
    cfg.run_dir = str(tmp_path)
    record = run_training(cfg, tmp_path)
    assert record["world_size"] == 1 and record["batching"] == mode
    for horizon in ("3", "6", "12", "avg"):
        assert all(math.isfinite(record["test"][horizon][k]) for k in ("mae", "rmse", "mape"))
    trained = record["parameters"] > 0 and model not in ("persistence", "historical_average")
    assert len(record["epochs"]) == (1 if trained else 0)
    if trained:
        assert math.isfinite(record["epochs"][0]["train_loss"])
