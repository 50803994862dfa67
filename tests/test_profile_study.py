"""benchmarks/profile_study.py's summary: true orders over seeds, taus, spreads, the table (on hand-made
profile.json contents; the study itself is a long benchmark, not a test)."""

from __future__ import annotations

import sys

import pytest

from helpers import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import profile_study  # noqa: E402


def fake(full: dict[str, float], ranking: list[str], tau: float, cost: float) -> dict:
    models = {label: {"trainable": label != "persistence", "predicted_mae": mae,
                      "curve": {"extrapolated": mae if label != "gwnet" else 0.1}} for label, mae in full.items()}
    return {"full_val_mae": full, "ranking": ranking, "kendall_tau_predicted_vs_full": tau, "cost_fraction": cost,
            "profile_cost_s": 10.0 * cost, "full_cost_s": 10.0, "models": models}


def test_summary_orders_taus_and_spreads():
    runs = {
        "synthetic": [fake({"persistence": 3.0, "tgcn": 2.0, "gwnet": 1.0}, ["gwnet", "tgcn", "persistence"], 1.0, 0.1)],
        "losloop": [fake({"persistence": 3.0, "tgcn": 1.0, "gwnet": 2.2}, ["tgcn", "gwnet", "persistence"], 1.0, 0.2),
                    fake({"persistence": 3.0, "tgcn": 1.2, "gwnet": 1.8}, ["gwnet", "tgcn", "persistence"], 1 / 3, 0.3)],
    }
    summary = profile_study.summarize(runs, "synthetic")
    loop = summary["losloop"]
    assert loop["true_order"] == ["tgcn", "gwnet", "persistence"]  # by the mean over seeds: 1.1 < 2.0 < 3.0
    assert loop["full_val_mae"]["tgcn"]["mean"] == pytest.approx(1.1)
    assert loop["full_val_mae"]["tgcn"]["std"] == pytest.approx(0.1414, abs=1e-4)
    assert loop["tau_vs_representative"] == pytest.approx(1 / 3)  # one discordant pair of three
    assert loop["tau_predicted_vs_full"]["mean"] == pytest.approx(2 / 3)
    assert loop["cost_fraction"]["mean"] == pytest.approx(0.25)
    assert summary["synthetic"]["tau_vs_representative"] == pytest.approx(1.0)
    # the bare extrapolations put gwnet (0.1) first: right on synthetic, one swap of three at each losloop seed
    assert summary["synthetic"]["tau_bare_extrapolation_per_seed"] == [pytest.approx(1.0)]
    assert loop["tau_bare_extrapolation_per_seed"] == [pytest.approx(1 / 3), pytest.approx(1 / 3)]
    table = profile_study.markdown(summary, "synthetic", "python benchmarks/profile_study.py")
    assert "| losloop (2 seeds) | tgcn 1.100±0.141 < gwnet 2.000±0.283 < persistence 3.000±0.000 | 0.33 |" in table
    assert "| 0.33, 0.33 | 0.250 ± 0.071 |" in table
    assert "| synthetic (1 seeds) |" in table and "| — |" in table


def test_chickenpox_has_no_historical_average():
    assert "historical_average" not in profile_study.models_for("chickenpox")
    assert profile_study.models_for("losloop") == profile_study.MODELS


def test_replay_curve_vs_halving_at_equal_budgets():
    # four trained models with 4 recorded half-epochs each, one baseline; full training 10 epochs each
    curves = {"slow": [5.0, 4.0, 3.0, 1.0], "fast": [2.0, 1.9, 1.85, 1.8], "bad": [6.0, 5.0, 5.5, 5.2],
              "mid": [3.0, 2.5, 2.4, 2.3]}
    models = {label: {"trainable": True, "val_mae_curve": c, "train_share": 0.5, "profile_cost_s": 40.0,
                      "full_epochs": 10} for label, c in curves.items()}
    models["persistence"] = {"trainable": False, "predicted_mae": 2.2, "profile_cost_s": 1.0}
    full = {"slow": 0.5, "fast": 1.7, "mid": 2.1, "persistence": 2.2, "bad": 4.0}
    run = {"models": models, "full_val_mae": full, "full_cost_s": 1001.0,
           "budget": {"full_epochs": 10, "curve": "auto"}}
    r = profile_study.replay_pair(run, 3)
    assert r["budget_epochs"] == 12
    assert r["halving"]["rungs"] == [[4, 2], [2, 4]]
    assert r["halving"]["ranking"] == ["fast", "persistence", "mid", "slow", "bad"]  # slow cut at rung 0
    # cost: 2 + 2 + 4 + 4 of 4 recorded epochs at 40 s each, plus the baseline's 1 s, over the full 1001 s
    assert r["halving"]["cost_fraction"] == pytest.approx((40 * 12 / 4 + 1) / 1001)
    assert r["halving"]["epoch_fraction"] == pytest.approx(12 * 0.5 / 40) == r["curve"]["epoch_fraction"]
    assert r["curve"]["cost_fraction"] == pytest.approx((40 * 3 * 4 / 4 + 1) / 1001)
    assert -1 <= r["curve"]["tau"] <= 1 and r["halving"]["tau"] < 1  # slow, truly first, ranked fourth
    assert "halving" not in profile_study.replay_pair(run, 4)  # its last rung would need 6 recorded epochs
    found, table = profile_study.replay_table({"x": [run]}, [3], [0], "cmd")
    assert "| x | 0 | 3 (12) |" in table and "| 4 x 2, 2 x 4 |" in table and found["x"]["seed0"]["3"] == r
