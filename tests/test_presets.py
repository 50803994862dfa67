"""Experiment presets compose into the published protocols and the scaling studies' sweeps."""

from __future__ import annotations

import pytest

from helpers import CONF_DIR, compose_config
from stgnn_launch.errors import UserError

DCRNN = {"dcrnn_metr_la": ("metr_la", "metr-la.h5", "adj_mx.pkl"),
         "dcrnn_pems_bay": ("pems_bay", "pems-bay.h5", "adj_mx_bay.pkl")}
GWNET = {"gwnet_metr_la": ("metr_la", "metr-la.h5", "adj_mx.pkl"),
         "gwnet_pems_bay": ("pems_bay", "pems-bay.h5", "adj_mx_bay.pkl")}


def sweeper_params(*overrides: str) -> dict[str, str]:
    """hydra.sweeper.params of the composed config: what `stgnn-train -m` sweeps."""
    from hydra import compose, initialize_config_dir

    from stgnn_launch.config.schema import register_configs

    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
    return {str(k): str(v) for k, v in cfg.hydra.sweeper.params.items()}


@pytest.mark.parametrize("preset", sorted(DCRNN))
def test_dcrnn_protocol(preset, tmp_path, monkeypatch):
    monkeypatch.setenv("STGNN_DATA", str(tmp_path))  # the one setting a researcher adds
    dataset, series_file, graph_file = DCRNN[preset]
    cfg = compose_config(f"experiment={preset}")
    assert (cfg.dataset.name, cfg.dataset.path, cfg.dataset.adj_path) == (
        dataset, f"{tmp_path}/{series_file}", f"{tmp_path}/{graph_file}")
    assert (cfg.dataset.train_ratio, cfg.dataset.test_ratio, cfg.dataset.split) == (0.7, 0.2, "dcrnn")
    assert cfg.model.name == "dcrnn"
    assert cfg.model.params == {"rnn_units": 64, "num_rnn_layers": 2, "max_diffusion_step": 2,
                                "cl_decay_steps": 2000, "use_curriculum_learning": True}
    assert (cfg.batching.window, cfg.batching.horizon, cfg.batching.batch_size) == (12, 12, 64)
    t = cfg.trainer
    assert (t.lr, t.adam_eps, t.weight_decay, t.lr_milestones, t.lr_gamma) == (0.01, 1e-3, 0.0, [20, 30, 40, 50], 0.1)
    assert (t.max_epochs, t.clip_grad_norm, t.patience) == (100, 5.0, 50)


@pytest.mark.parametrize("preset", sorted(GWNET))
def test_graph_wavenet_protocol(preset, tmp_path, monkeypatch):
    monkeypatch.setenv("STGNN_DATA", str(tmp_path))
    dataset, series_file, _ = GWNET[preset]
    cfg = compose_config(f"experiment={preset}")
    assert (cfg.dataset.name, cfg.dataset.path) == (dataset, f"{tmp_path}/{series_file}")
    assert cfg.model.name == "gwnet"
    assert cfg.model.params == {"residual_channels": 32, "dilation_channels": 32, "skip_channels": 256,
                                "end_channels": 512, "kernel_size": 2, "blocks": 4, "layers": 2, "dropout": 0.3,
                                "embed_dim": 10, "order": 2, "adaptive_adj": True}
    assert (cfg.batching.window, cfg.batching.horizon, cfg.batching.batch_size) == (12, 12, 64)
    t = cfg.trainer
    assert (t.lr, t.adam_eps, t.weight_decay, t.lr_milestones) == (0.001, 1e-8, 1e-4, [])
    assert (t.max_epochs, t.clip_grad_norm, t.patience) == (100, 5.0, 100)


def test_one_override_changes_a_protocol_setting():
    cfg = compose_config("experiment=dcrnn_metr_la", "dataset.path=/data/la.h5", "trainer.max_epochs=3")
    assert (cfg.dataset.path, cfg.trainer.max_epochs, cfg.trainer.lr) == ("/data/la.h5", 3, 0.01)


def test_adam_eps_must_be_positive():
    with pytest.raises(UserError, match="trainer.adam_eps: expected a positive epsilon, found 0.0"):
        compose_config("trainer.adam_eps=0")


def test_scaling_study_is_pgti_on_pems_over_slurm(tmp_path, monkeypatch):
    monkeypatch.setenv("STGNN_DATA", str(tmp_path))
    cfg = compose_config("experiment=scaling_study")
    assert (cfg.dataset.name, cfg.model.name, cfg.model.params) == ("pems", "dcrnn_pgti", {"K": 3, "hidden": 2})
    assert (cfg.launcher.name, cfg.launcher.gpus_per_node, cfg.gpus) == ("slurm", 4, 4)
    assert (cfg.trainer.lr, cfg.trainer.clip_grad_norm, cfg.trainer.lr_milestones, cfg.batching.batch_size) == (
        0.001, 0.0, [], 64)
    params = sweeper_params("experiment=scaling_study")
    assert params == {"gpus": "4,8,16,32,64,128", "batching": "standard,index,dist_index", "trainer.seed": "0,1,2"}
    for gpus in params["gpus"].split(","):  # every point of the sweep is a valid Slurm run
        for batching in params["batching"].split(","):
            point = compose_config("experiment=scaling_study", f"gpus={gpus}", f"batching={batching}")
            assert (point.gpus, point.batching.mode) == (int(gpus), batching)
            assert point.gpus % point.launcher.gpus_per_node == 0


def test_local_scaling_study_is_small_and_sweeps_ranks_batching_and_seeds():
    cfg = compose_config("experiment=scaling_study_local")
    assert (cfg.dataset.name, cfg.dataset.num_nodes, cfg.dataset.num_steps) == ("synthetic", 40, 1152)
    assert (cfg.model.name, cfg.launcher.name, cfg.gpus) == ("dcrnn_pgti", "local", 1)
    assert (cfg.trainer.max_epochs, cfg.trainer.num_threads, cfg.trainer.max_batches_per_epoch) == (3, 1, None)
    assert (cfg.trainer.lr, cfg.trainer.clip_grad_norm) == (0.001, 0.0)  # PGT-I's, from scaling_study
    assert sweeper_params("experiment=scaling_study_local") == {
        "gpus": "1,2", "batching": "standard,index,dist_index", "trainer.seed": "0,1,2"}
