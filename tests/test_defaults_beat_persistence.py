"""What a new user trains with (`stgnn-train dataset=X`, nothing else) must beat both baselines.

The defaults: the network learns a correction to a fitted baseline (model.base=auto: the historical average
where the step has time-of-day slots, else persistence) for max_epochs=auto (until patience, or
trainer.time_budget_min: 5 minutes, the synthetic demo 1). Their leave-one-dataset-out check on every
dataset is in benchmarks/RESULTS.md ("Defaults on data they were not chosen on"); here the two cheap ones
(the quick start's synthetic set and chickenpox) are trained for real, the pieces are tested one by one,
and the composed defaults are pinned, so that a change to them is a deliberate one.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import TINY_DATA, compose_config, shared_file, tiny
from stgnn_launch.errors import UserError
from stgnn_launch.models.baselines import Persistence
from stgnn_launch.models.registry import ModelSpec, build_model
from stgnn_launch.models.residual import BaselineResidual, FittedBlend, with_base
from stgnn_launch.train.run import run_training


def train(run_dir: Path, *overrides: str) -> dict:
    cfg = compose_config(*overrides, "trainer.progress=false")  # progress off only: it changes no number
    cfg.run_dir = str(run_dir)
    return run_training(cfg, run_dir)


@pytest.mark.slow
@pytest.mark.parametrize("dataset, data_file", [
    ((), None),  # the quick start: synthetic, generated on first use
    (("dataset=chickenpox",), "chickenpox/chickenpox.json"),
])
def test_default_settings_beat_both_baselines(tmp_path, dataset, data_file):
    if data_file is not None:
        shared_file(data_file)  # skips where ../shared/data is absent
    record = train(tmp_path, *dataset)
    model_mae = record["test"]["avg"]["mae"]
    baselines = {name: m["avg"]["mae"] for name, m in record["baselines"].items()}
    # synthetic: both baselines; chickenpox's weekly step has no time-of-day slots, so persistence alone
    assert set(baselines) == ({"persistence", "historical_average"} if not dataset else {"persistence"})
    assert all(model_mae < 0.95 * mae for mae in baselines.values()), (model_mae, baselines)
    assert record["beats_persistence"] is True


def test_defaults_are_the_chosen_ones_and_overrides_still_win():
    synthetic = compose_config()
    t = synthetic.trainer
    assert (t.lr, t.max_epochs, t.time_budget_min, t.budget_s, synthetic.model.base) == (0.01, "auto", 1, 60.0, "auto")
    losloop = compose_config("dataset=losloop")  # no dataset carries its own training settings any more
    t = losloop.trainer
    assert (t.max_epochs, t.budget_s, losloop.batching.batch_size, losloop.model.base) == ("auto", 300.0, "auto", "auto")
    overridden = compose_config("dataset=losloop", "trainer.max_epochs=3", "trainer.time_budget_min=0.5")
    assert (overridden.trainer.epoch_limit, overridden.trainer.budget_s) == (3, None)  # a number: every epoch
    assert compose_config("trainer.time_budget_min=2").trainer.budget_s == 120.0
    preset = compose_config("experiment=losloop")  # a preset still sets its own protocol over the defaults
    assert (preset.trainer.max_epochs, preset.trainer.lr, preset.batching.batch_size) == (20, 0.002, 16)


def test_every_published_preset_trains_the_bare_network():
    conf = Path(__file__).resolve().parents[1] / "stgnn_launch" / "conf" / "experiment"
    names = sorted(p.stem for p in conf.glob("*.yaml"))
    assert len(names) >= 10
    for name in names:
        cfg = compose_config(f"experiment={name}")
        assert cfg.model.base == "none", name
        assert isinstance(cfg.trainer.max_epochs, int), name  # their own epochs, no wall-time budget


@pytest.mark.parametrize("override, message", [
    ("trainer.max_epochs=many", "trainer.max_epochs: expected a positive integer or auto, found 'many'"),
    ("trainer.max_epochs=0", "trainer.max_epochs: expected a positive integer or auto, found 0"),
    ("trainer.time_budget_min=-1", "trainer.time_budget_min: expected a positive number of minutes or null, found -1"),
    ("model.base=ha", "model.base: expected one of auto, historical_average, persistence, none, found 'ha'"),
])
def test_bad_values_are_one_line(override, message):
    with pytest.raises(UserError) as err:
        compose_config(override)
    assert message in str(err.value)


def spec(slots: int = 288) -> ModelSpec:
    adjacency = torch.eye(5) + torch.roll(torch.eye(5), 1, 1)
    from stgnn_launch.data.graph import SparseGraph

    return ModelSpec(num_nodes=5, in_features=2, out_features=1, window=6, horizon=4,
                     graph=SparseGraph.from_dense(adjacency.numpy()), steps_per_day=slots, tod_channel=1)


def test_the_forecast_is_the_fitted_blend_plus_the_gated_network():
    torch.manual_seed(0)
    s = spec()
    network = build_model("tgcn", s, {"hidden": 8})
    model = with_base(network, "auto", s, has_slots=True, fits=True)
    assert isinstance(model, BaselineResidual) and isinstance(model.base, FittedBlend)
    # A series = noise that keeps 0.6 of itself over 2 steps + a daily pattern: for output step 2 the best
    # linear forecast is 0.6 x the last reading + 0.4 x the pattern (which the historical average reads);
    # fitted for the least absolute error on 4,096 pairs, so within a few hundredths.
    steps = 288 * 40
    noise = torch.zeros(steps, 5, 1)
    shocks = torch.randn(steps, 5, 1)
    for i in range(2, steps):
        noise[i] = 0.6 * noise[i - 2] + shocks[i]
    t = torch.arange(steps)
    values = noise + 3 * torch.sin(2 * torch.pi * t / 288).view(-1, 1, 1)
    model.fit(values, torch.ones_like(values, dtype=torch.bool), t % 288)
    a, b, c = model.base.coef[:, 1]  # output step 2
    assert torch.allclose(a, torch.full_like(a, 0.6), atol=0.06), a.flatten()
    assert torch.allclose(b, torch.full_like(b, 0.4), atol=0.08), b.flatten()
    assert torch.allclose(c, torch.zeros_like(c), atol=0.08), c.flatten()
    x = torch.randn(3, 6, 5, 2)
    x[..., 1] = torch.rand(3, 1, 5).expand(3, 6, 5)  # a time-of-day fraction channel
    assert torch.equal(model(x), model.base(x))  # the gate starts at 0: the first forecast is the blend
    with torch.no_grad():
        model.gate.fill_(0.5)
    assert torch.equal(model(x), model.base(x) + 0.5 * network(x))
    # without time-of-day slots the blend has no historical-average term; where nothing can be fitted
    # (time-sharded, too large) auto trains the bare network
    assert with_base(build_model("tgcn", s, {"hidden": 8}), "auto", s, has_slots=False, fits=True).base.average is None
    bare = build_model("tgcn", s, {"hidden": 8})
    assert with_base(bare, "auto", s, has_slots=True, fits=False) is bare
    assert with_base(bare, "none", s, has_slots=True, fits=True) is bare
    assert isinstance(with_base(bare, "persistence", s, has_slots=False, fits=False).base, Persistence)
    with pytest.raises(UserError, match="model.base: expected a base that can be fitted here"):
        with_base(bare, "historical_average", s, has_slots=False, fits=True)
    baseline = build_model("persistence", s, {})
    assert with_base(baseline, "auto", s, has_slots=True, fits=True) is baseline  # a baseline is not wrapped


def test_auto_epochs_stop_on_the_time_budget_and_a_number_runs_them_all(tmp_path, capsys):
    small = (*TINY_DATA, *tiny(), "trainer.max_batches_per_epoch=2", "model.base=auto")
    record = train(tmp_path / "auto", *small, "trainer.max_epochs=auto", "trainer.time_budget_min=0.0001")
    out = capsys.readouterr().out
    assert len(record["epochs"]) == 1  # the first epoch always runs; the budget stops before the second
    assert "time budget: stopping after epoch 1" in out
    assert "learning a correction to a fitted blend of persistence, the historical average and the mean (model.base)" in out
    assert "epochs:     auto: until 10 epochs bring no better validation MAE, or after 0.0001 min" in out
    record = train(tmp_path / "fixed", *small, "trainer.max_epochs=3", "trainer.time_budget_min=0.0001")
    assert len(record["epochs"]) == 3


def test_a_run_saved_before_model_base_reads_back_as_the_bare_network(tmp_path):
    from omegaconf import OmegaConf

    from stgnn_launch.config.load import load_run_config, save_run_config

    path = save_run_config(compose_config(), tmp_path)
    saved = OmegaConf.load(path)
    assert saved.model.base == "auto"
    del saved.model["base"]  # as a config.yaml written before the key existed
    path.write_text(OmegaConf.to_yaml(saved))
    assert load_run_config(tmp_path).model.base == "none"  # what that run trained: its checkpoint loads


def test_a_run_on_the_fitted_blend_resumes_to_the_uninterrupted_run(tmp_path):
    from stgnn_launch.train import checkpoint

    base = (*TINY_DATA, *tiny(), "trainer.max_batches_per_epoch=3", "model.base=auto", "trainer.patience=50")
    straight = train(tmp_path / "straight", *base, "trainer.max_epochs=3")
    train(tmp_path / "resumed", *base, "trainer.max_epochs=2")
    resumed = train(tmp_path / "resumed", *base, "trainer.max_epochs=3", "trainer.resume=true")
    assert resumed["test"] == straight["test"] and resumed["parameters"] == straight["parameters"]
    weights = checkpoint.load(tmp_path / "resumed" / "checkpoints" / "last.pt")["model"]
    assert "gate" in weights and any(k.startswith("base.") for k in weights)  # the fit travels with the run


def test_ddp_broadcasts_only_the_buffers_training_changes(tmp_path):
    """The fitted blend's tables are constants: no broadcast before each forward (a collective per step);
    Graph WaveNet's BatchNorm statistics still are broadcast."""
    import torch.distributed as dist

    from stgnn_launch.models.residual import moving_buffers
    from stgnn_launch.train.trainer import wrap_ddp

    s = spec()
    tgcn = with_base(build_model("tgcn", s, {"hidden": 8}), "auto", s, has_slots=True, fits=True)
    gwnet = with_base(build_model("gwnet", s, {}), "auto", s, has_slots=True, fits=True)
    assert [n for n, _ in tgcn.named_buffers()] == ["base.coef", "base.average.table"]
    assert moving_buffers(tgcn) == []
    moving = moving_buffers(gwnet)
    assert moving and all(n.startswith("network.norms.") for n in moving)
    assert len(moving) == len(list(gwnet.named_buffers())) - 2
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert not wrap_ddp(tgcn, torch.device("cpu")).will_sync_module_buffers()
        assert wrap_ddp(gwnet, torch.device("cpu")).will_sync_module_buffers()
    finally:
        dist.destroy_process_group()
