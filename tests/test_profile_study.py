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
