"""Negative graph weights and a NaN training loss (issue 22, point 4): refused in one line, not trained as NaN."""

import json

import numpy as np
import pytest

from helpers import TINY, compose_config
from stgnn_launch.data.graph import SparseGraph
from stgnn_launch.errors import UserError
from stgnn_launch.models.registry import ModelSpec, build_model
from stgnn_launch.train.run import run_training


def spec_with(adjacency: np.ndarray) -> ModelSpec:
    return ModelSpec(num_nodes=len(adjacency), in_features=2, out_features=1, window=12, horizon=12,
                     graph=SparseGraph.from_dense(adjacency), steps_per_day=288, tod_channel=1)


@pytest.mark.parametrize("model,params", [("tgcn", {"hidden": 4}), ("dcrnn", {"rnn_units": 4})])
def test_a_graph_with_negative_weights_is_refused_by_models_that_normalise_by_degree(model, params):
    adjacency = np.eye(4, dtype=np.float32) + np.roll(np.eye(4, dtype=np.float32), 1, axis=1)
    adjacency[2, 3] = -1.5  # row 2 sums to -0.5 (with T-GCN's I: 0.5 - 1.5 + 1): D^-1/2 of it is NaN
    with pytest.raises(UserError, match=r"non-negative edge weights .* found 1 .* -1.5 from node 2 to node 3"):
        build_model(model, spec_with(adjacency), params)


def test_a_sensor_without_edges_keeps_finite_weights():
    adjacency = np.eye(4, dtype=np.float32)
    adjacency[1, 1] = 0.0  # sensor 1: no edge at all, its row sums to 0
    for model, params in (("tgcn", {"hidden": 4}), ("dcrnn", {"rnn_units": 4})):
        net = build_model(model, spec_with(adjacency), params)
        assert all(np.isfinite(e.vals).all() for e in net.graph.edges)


NAN_MODEL = '''
import torch
from torch import nn

class Diverging(nn.Module):
    def __init__(self, spec, hidden=8):
        super().__init__()
        self.h, self.f = spec.horizon, spec.out_features
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x, targets=None):
        out = x[:, -1:, :, :self.f].expand(-1, self.h, -1, -1) * self.scale
        return out * float("nan") if self.training else out
'''


def test_a_nan_training_loss_stops_the_run_after_one_epoch_with_failed_json(tmp_path, monkeypatch):
    (tmp_path / "diverging.py").write_text(NAN_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = compose_config(*TINY, "model=custom", "model.target=diverging:Diverging", "trainer.max_epochs=20",
                         "trainer.max_batches_per_epoch=2")
    run_dir = tmp_path / "run"
    cfg.run_dir = str(run_dir)
    with pytest.raises(UserError, match="expected a finite training loss, found nan in epoch 1"):
        run_training(cfg, run_dir)
    assert json.loads((run_dir / "failed.json").read_text())["type"] == "TrainingDiverged"
    assert not (run_dir / "results.json").exists()
    assert not (run_dir / "checkpoints" / "last.pt").exists()  # no NaN weights saved as a checkpoint


def test_a_sensor_without_edges_is_warned_about():
    from stgnn_launch.data.prepare.checks import graph_warnings

    adjacency = np.eye(4, dtype=np.float32) + np.roll(np.eye(4, dtype=np.float32), 1, axis=1)
    assert graph_warnings(SparseGraph.from_dense(adjacency), ["a", "b", "c", "d"]) == []
    adjacency[1, 2] = adjacency[0, 1] = 0.0  # b keeps only its self-loop
    (warning,) = graph_warnings(SparseGraph.from_dense(adjacency), ["a", "b", "c", "d"])
    assert warning.startswith("1 sensors have no edge to or from another sensor in the graph (b)")
