"""stgnn-profile profile.method=halving: the rung schedule, survivors, the ranking, the replay, and a tiny
study end to end (resumed rungs, a rerun reusing every finished run, tau and cost fraction)."""

from __future__ import annotations

import json

import pytest

from helpers import TINY_DATA
from stgnn_launch.errors import UserError
from stgnn_launch.profile import halving
from stgnn_launch.profile.config import ProfileConfig


def test_rung_sizes_stop_while_two_remain():
    assert halving.rung_sizes(4, 2) == [4, 2]
    assert halving.rung_sizes(6, 2) == [6, 3, 2]
    assert halving.rung_sizes(9, 3) == [9, 3]
    assert halving.rung_sizes(2, 2) == [2]
    assert halving.rung_sizes(1, 2) == [1]


@pytest.mark.parametrize("n, budget, eta, plan", [
    (4, 16, 2, [(4, 2), (2, 6)]),  # the curve method's 4 epochs x 4 models: 4 x 2 + 2 x 4 = 16
    (4, 12, 2, [(4, 2), (2, 4)]),  # 3 epochs x 4: 4 x 2 + 2 x 2 = 12
    (6, 24, 2, [(6, 1), (3, 2), (2, 9)]),  # r=2 would need 12 + 6 + 8 = 26: r=1, 6 + 3 + 14 = 23
    (2, 8, 2, [(2, 4)]),  # one rung: the same epochs as the curve method
    (4, 3, 2, [(4, 1), (2, 2)]),  # below one epoch a rung: at least one each (6 > 3, said in the budget)
])
def test_schedule_spends_the_curve_methods_budget(n, budget, eta, plan):
    assert halving.schedule(n, budget, eta) == plan
    sizes, epochs = zip(*plan)
    assert halving.spent(list(sizes), list(epochs)) <= max(budget, sum(sizes))
    if budget >= 2 * n:
        assert budget - halving.spent(list(sizes), list(epochs)) < sizes[-1]  # whole epochs: less than a round left


def test_survivors_and_ranking():
    assert halving.survivors({"a": 3.0, "b": 1.0, "c": 2.0, "d": 4.0}, 2) == ["b", "c"]
    rungs = [{"a": 3.0, "b": 1.0, "c": 2.0, "d": 4.0}, {"b": 0.9, "c": 0.7}]
    # survivors by their last rung, then the eliminated by their rung-0 MAE
    assert halving.ranking(rungs, {}) == ["c", "b", "a", "d"]
    # a baseline goes before the first trained candidate in that order whose MAE is above its own
    assert halving.ranking(rungs, {"persistence": 3.5, "ha": 0.8}) == ["c", "ha", "b", "a", "persistence", "d"]
    assert halving.ranking(rungs, {"worst": 9.0}) == ["c", "b", "a", "d", "worst"]
    # eliminated at a later rung ranks above eliminated earlier, even with a worse MAE there
    assert halving.ranking([{"a": 1.0, "b": 2.0, "c": 0.5}, {"a": 1.5, "c": 0.4}], {}) == ["c", "a", "b"]


def test_replay_on_recorded_curves():
    curves = {"slow": [5.0, 4.0, 3.0, 1.0], "fast": [2.0, 1.9, 1.85, 1.8], "bad": [6.0, 5.0, 5.5, 5.2],
              "mid": [3.0, 2.5, 2.4, 2.3]}
    out = halving.replay(curves, [(4, 2), (2, 4)], {"persistence": 2.2})
    assert out["rungs"][0] == {"slow": 4.0, "fast": 1.9, "bad": 5.0, "mid": 2.5}
    assert out["rungs"][1] == {"fast": 1.8, "mid": 2.3}  # slow is cut at rung 0 though it ends best
    assert out["ranking"] == ["fast", "persistence", "mid", "slow", "bad"]
    assert out["epochs"] == {"slow": 2, "fast": 4, "bad": 2, "mid": 4}


def test_method_and_eta_are_checked():
    assert ProfileConfig().method == "curve"
    with pytest.raises(UserError, match="profile.method: expected curve | halving"):
        ProfileConfig(method="bandit")
    with pytest.raises(UserError, match="profile.eta: expected an integer of at least 2"):
        ProfileConfig(eta=1)


def test_tiny_halving_end_to_end(tmp_path, capsys):
    from stgnn_launch.cli.profile import profile

    study = tmp_path / "study"
    args = [*TINY_DATA, f"dataset.cache_dir={tmp_path / 'cache'}", "trainer.patience=5",
            "trainer.max_batches_per_epoch=4",  # full epochs of 4 batches, profiling epochs of 2
            "models=[persistence,{name: tgcn, params: {hidden: 4}},{name: tgcn, label: tgcn_wide, "
            "params: {hidden: 8}},{name: tgcn, label: tgcn_thin, params: {hidden: 2}}]",
            "profile.method=halving", "profile.full=true", "profile.full_epochs=3", "profile.min_epochs=2",
            "profile.train_fraction=0.5", f"profile.out_dir={study}"]
    assert profile(args) == 0
    out = capsys.readouterr().out
    result = json.loads((study / "profile.json").read_text())
    assert result["method"] == "halving"
    # the curve method's budget: 3 trained candidates x 2 epochs = 6: rung 0 three x 1, rung 1 two on to 2... + 1
    assert result["budget"]["rungs"] == [{"models": 3, "epochs": 1}, {"models": 2, "epochs": 2}]
    assert result["budget"]["profiling_epochs_total"] == 5
    assert out.index("predicted ranking (before the full runs)") < out.index("(measured)  ")  # then the final table
    assert "successive halving, eta 2" in out and "(measured)" in out
    survivors = [label for label, m in result["models"].items() if m["trainable"] and m["last_rung"] == 1]
    assert len(survivors) == 2
    for label in survivors:  # resumed from rung 0, not restarted: one run of 2 epochs over 2 attempts
        rec = json.loads((study / "halving" / "rung1" / label / "results.json").read_text())
        assert rec["attempts"] == 2 and len(rec["epochs"]) == 2
        first = json.loads((study / "halving" / "rung0" / label / "results.json").read_text())
        assert rec["epochs"][0]["val_mae"] == first["epochs"][0]["val_mae"]
        assert result["models"][label]["profile_cost_s"] == rec["wall_time_s"] > first["attempt_wall_time_s"] * 0.5
    trained = [label for label in result["ranking"] if label != "persistence"]
    assert trained[:2] == sorted(survivors, key=lambda s: result["models"][s]["predicted_mae"])
    assert sorted(result["ranking"]) == ["persistence", "tgcn", "tgcn_thin", "tgcn_wide"]
    assert -1 <= result["kendall_tau_predicted_vs_full"] <= 1
    assert result["cost_fraction"] == pytest.approx(result["profile_cost_s"] / result["full_cost_s"])
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["ranking"] == result["ranking"]

    # Started again on the same out_dir: every rung's run and every full run is reused, nothing trains.
    assert profile(args) == 0
    again_out = capsys.readouterr().out
    reused = [line for line in again_out.splitlines() if line.startswith("stgnn-profile: reusing")]
    assert len(reused) == 1 + 3 + 2 + 3  # the baseline, rung 0, rung 1, the full runs
    again = json.loads((study / "profile.json").read_text())
    assert again["ranking"] == result["ranking"] and again["cost_fraction"] == result["cost_fraction"]
