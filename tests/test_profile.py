"""stgnn-profile: learning-curve extrapolation, Kendall's tau, candidates, and a tiny study end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import TINY_DATA
from stgnn_launch.errors import UserError
from stgnn_launch.profile.candidates import parse_candidates
from stgnn_launch.profile.config import ProfileConfig
from stgnn_launch.profile.curve import exponential, inverse_power, predict_final
from stgnn_launch.profile.rank import kendall_tau, order
from stgnn_launch.train import checkpoint


@pytest.mark.parametrize("form, function, params", [
    ("inverse_power", inverse_power, (2.5, 1.8, 0.9)),
    ("exponential", exponential, (3.1, 2.0, 0.45)),
])
def test_curve_fit_recovers_known_parameters(form, function, params):
    rng = np.random.default_rng(0)
    x = np.arange(1, 13, dtype=float)
    y = function(x, *params) + rng.normal(0, 0.005, x.size)
    fit = predict_final(x, y, at=60.0, form=form)
    assert fit.form == form
    np.testing.assert_allclose(fit.params, params, rtol=0.08)
    truth = float(function(60.0, *params))
    assert abs(fit.predicted - truth) < 0.05
    assert 0 < fit.std < 0.2
    assert abs(fit.predicted - truth) < 4 * fit.std + 0.01  # the uncertainty covers the truth
    assert fit.weight > 0.95  # a confident fit keeps its extrapolated gain


def test_an_extrapolation_less_certain_than_its_gain_is_shrunk_to_what_was_seen():
    # Graph WaveNet's profiling curve on the synthetic set, seed 1 (4 epochs on half the windows): the bare
    # exponential fit ran to 0.27 +- 21.9 at epoch 10; full training reached 1.49.
    y = [2.826, 2.353, 2.648, 1.699]
    fit = predict_final([0.5, 1.0, 1.5, 2.0], y, at=10.0)
    assert fit.extrapolated < 0.5 and fit.extrapolated_std > 5
    assert fit.weight < 0.01
    assert min(y) - 0.05 < fit.predicted <= min(y)
    gain = min(y) - fit.extrapolated
    assert fit.predicted == pytest.approx(min(y) - gain ** 3 / (gain ** 2 + fit.extrapolated_std ** 2))
    trend = (min(y[:2]) - min(y)) * (10.0 - 2.0) / (2.0 - 1.0)  # the recent fall, continued linearly to the end
    assert fit.trend == pytest.approx(trend)
    assert fit.std == pytest.approx(max(fit.extrapolated_std * fit.weight ** 0.5, (1 - fit.weight) * trend))


def test_a_flat_short_curve_does_not_claim_certainty():
    # Graph WaveNet on the Montevideo bus, seed 0: flat after four half-epochs, 0.420 after ten epochs.
    y = [0.570, 0.546, 0.534, 0.548]
    fit = predict_final([0.5, 1.0, 1.5, 2.0], y, at=10.0)
    assert fit.predicted == pytest.approx(min(y), abs=0.01)  # no gain the fit can support: what was seen
    assert fit.std == pytest.approx(0.096, abs=0.002)  # but not certain: the recent trend leaves ~0.1 open
    assert fit.predicted - 2 * fit.std < 0.420  # the truth, 0.11 lower, inside two of them


@pytest.mark.parametrize("function, params, form", [
    (inverse_power, (2.0, 3.0, 0.7), "inverse_power"),
    (exponential, (2.0, 3.0, 0.6), "exponential"),
])
def test_auto_picks_the_form_that_generated_the_curve(function, params, form):
    x = np.arange(1, 9, dtype=float)
    y = function(x, *params) + np.random.default_rng(1).normal(0, 0.002, x.size)
    assert predict_final(x, y, at=30.0).form == form


def test_prediction_is_never_worse_than_the_best_epoch_seen():
    y = [3.0, 2.6, 2.4, 2.5, 2.7]  # got worse at the end: full training keeps its best epoch
    fit = predict_final(np.arange(1, 6, dtype=float), y, at=30.0)
    assert fit.predicted <= 2.4 + 1e-9


def test_kendall_tau_and_order():
    a = {"p": 3.0, "t": 2.0, "g": 1.0}
    assert order(a) == ["g", "t", "p"]
    assert kendall_tau(a, {"p": 30.0, "t": 20.0, "g": 10.0}) == pytest.approx(1.0)
    assert kendall_tau(a, {"p": 1.0, "t": 2.0, "g": 3.0}) == pytest.approx(-1.0)
    assert kendall_tau(a, {"p": 3.0, "t": 1.0, "g": 2.0}) == pytest.approx(1 / 3)  # one swapped pair of three
    assert kendall_tau(a, {"p": 1.0}) is None


def test_candidates_builtin_user_class_and_own_hyperparameters():
    found = parse_candidates(["tgcn", "my_pkg.nets:MyNet",
                              {"name": "gwnet", "label": "gwnet_small", "params": {"residual_channels": 8}}])
    assert [c.label for c in found] == ["tgcn", "MyNet", "gwnet_small"]
    assert found[1].model_group == "custom" and found[1].target == "my_pkg.nets:MyNet"
    assert found[2].model_group == "gwnet" and found[2].params == {"residual_channels": 8}
    with pytest.raises(UserError, match="models: expected distinct labels"):
        parse_candidates(["tgcn", "tgcn"])
    with pytest.raises(UserError, match=r"models\[0\]: expected keys name"):
        parse_candidates([{"nme": "tgcn"}])


def test_budget_sets_the_profiling_epochs():
    assert ProfileConfig(full_epochs=30, epochs_fraction=0.2).profile_epochs() == 6
    assert ProfileConfig(full_epochs=30, epochs_fraction=0.05).profile_epochs() == 4  # min_epochs
    assert ProfileConfig(full_epochs=30, budget=0.1, train_fraction=0.5).profile_epochs() == 6
    assert ProfileConfig(full_epochs=30, max_epochs=5).profile_epochs() == 5
    with pytest.raises(UserError, match="profile.train_fraction: expected a fraction in"):
        ProfileConfig(train_fraction=0.0)


def test_tiny_profile_end_to_end(tmp_path, capsys):
    from stgnn_launch.cli.profile import profile

    args = [*TINY_DATA, f"dataset.cache_dir={tmp_path / 'cache'}", "trainer.patience=2",
            "trainer.max_batches_per_epoch=6",  # full epochs of 6 batches, profiling epochs of 3
            "models=[persistence,{name: tgcn, params: {hidden: 4}},{name: tgcn, label: tgcn_wide, params: {hidden: 12}}]",
            "profile.full=true", "profile.full_epochs=4", "profile.min_epochs=3", "profile.train_fraction=0.5",
            f"profile.out_dir={tmp_path / 'study'}"]
    assert profile(args) == 0
    out = capsys.readouterr().out
    summary = json.loads(out.strip().splitlines()[-1])
    result = json.loads((tmp_path / "study" / "profile.json").read_text())
    assert list(result)[-4:] == ["ranking", "predicted_mae", "kendall_tau_predicted_vs_full", "cost_fraction"]
    assert summary == {k: result[k] for k in list(result)[-4:]}
    assert sorted(result["ranking"]) == ["persistence", "tgcn", "tgcn_wide"]
    wide = json.loads((tmp_path / "study" / "profile" / "tgcn_wide" / "results.json").read_text())
    assert wide["config"]["model"]["params"]["hidden"] == 12  # the candidate's own hyperparameters
    tgcn = result["models"]["tgcn"]
    assert tgcn["epochs"] == 3 and len(tgcn["val_mae_curve"]) == 3 and tgcn["train_share"] == 0.5
    assert tgcn["predicted_mae"] <= min(tgcn["val_mae_curve"]) and tgcn["predicted_std"] >= 0
    assert tgcn["curve"]["form"] in ("inverse_power", "exponential", "last_value")
    assert result["models"]["persistence"]["curve"] == {"form": "exact"}
    assert result["models"]["persistence"]["predicted_mae"] == result["full_val_mae"]["persistence"]
    assert -1 <= result["kendall_tau_predicted_vs_full"] <= 1
    assert result["cost_fraction"] == pytest.approx(result["profile_cost_s"] / result["full_cost_s"])
    assert (tmp_path / "study" / "bump_chart.png").read_bytes()[:4] == b"\x89PNG"
    assert "persistence" in out and "±" in out

    # Started again on the same out_dir (its allocation ended): finished runs are reused, not rerun; a run
    # stopped after a checkpoint (no results.json) resumes from it, and its cost spans both attempts.
    wide_dir = tmp_path / "study" / "full" / "tgcn_wide"
    before = json.loads((wide_dir / "results.json").read_text())
    stopped_at_s = checkpoint.load(wide_dir / "checkpoints" / "last.pt")["run_wall_time_s"]
    (wide_dir / "results.json").unlink()
    assert profile(args) == 0
    out = capsys.readouterr().out
    reused = sorted(line.rsplit("/", 2)[-2] + "/" + line.rsplit("/", 1)[-1]
                    for line in out.splitlines() if line.startswith("stgnn-profile: reusing"))
    assert reused == ["full/tgcn", "profile/persistence", "profile/tgcn", "profile/tgcn_wide"]
    assert f"stgnn-profile: resuming the unfinished run in {wide_dir} from its last checkpoint" in out
    again = json.loads((tmp_path / "study" / "profile.json").read_text())
    assert again["predicted_mae"] == result["predicted_mae"] and again["ranking"] == result["ranking"]
    assert again["full_val_mae"] == result["full_val_mae"]
    resumed = json.loads((wide_dir / "results.json").read_text())
    assert resumed["attempts"] == 2 and resumed["epochs"] == before["epochs"]
    assert resumed["wall_time_s"] == stopped_at_s + resumed["attempt_wall_time_s"]

    # Predicting again from the stored curves (a newer predictor) trains nothing and keeps the measurements.
    from stgnn_launch.profile.study import refit

    stored = json.loads((tmp_path / "study" / "profile.json").read_text())
    worse = 10 * max(stored["predicted_mae"].values())
    stored["models"]["tgcn"]["val_mae_curve"] = [1.2 * worse, 1.07 * worse, worse]  # now the worst candidate
    (tmp_path / "study" / "profile.json").write_text(json.dumps(stored))
    redone = refit(tmp_path / "study")
    expected = predict_final([0.5, 1.0, 1.5], [1.2 * worse, 1.07 * worse, worse], at=4.0)
    assert redone["predicted_mae"]["tgcn"] == pytest.approx(expected.predicted) and expected.predicted > worse / 2
    assert redone["ranking"][-1] == "tgcn"
    assert redone["full_val_mae"] == again["full_val_mae"] and redone["cost_fraction"] == again["cost_fraction"]
    assert list(redone)[-4:] == ["ranking", "predicted_mae", "kendall_tau_predicted_vs_full", "cost_fraction"]
    assert json.loads((tmp_path / "study" / "profile.json").read_text()) == redone

    from stgnn_launch.config.load import load_run_config
    from stgnn_launch.profile.runner import finished, stopped_part_way

    run = tmp_path / "study" / "full" / "tgcn"
    cfg = load_run_config(run)
    assert finished(cfg, run) and stopped_part_way(cfg, run)
    cfg.trainer.resume = not cfg.trainer.resume  # how a run was started is not which run it is
    assert finished(cfg, run)
    cfg.trainer.lr *= 2  # another config in the same directory is not this run, nor to be resumed
    assert not finished(cfg, run) and not stopped_part_way(cfg, run)


def test_too_short_a_curve_falls_back_to_the_best_value_seen():
    fit = predict_final([1.0, 2.0], [3.0, 2.5], at=10.0)
    assert fit.form == "last_value" and fit.predicted == 2.5


@pytest.mark.parametrize("args, message", [
    (["profile.curve=cubic"], "profile.curve: expected auto | inverse_power | exponential"),
    (["models=[]"], "models: expected at least one candidate"),
    (["dataset=nosuchset"], "config: "),
])
def test_bad_study_settings_are_refused_before_any_run(tmp_path, args, message):
    from stgnn_launch.cli.profile import profile

    with pytest.raises(UserError, match=message):
        profile([*args, f"profile.out_dir={tmp_path / 'study'}"])
    assert not (tmp_path / "study").exists()
