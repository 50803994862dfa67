"""model=pyg_recurrent: PyG-style recurrent graph cells (GRU- and LSTM-like) on batched static graphs."""

import importlib
import math
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import TINY_DATA, compose_config, shared_file
from stgnn_launch.errors import UserError
from stgnn_launch.models.pyg_recurrent import GCNGRUCell, PygRecurrent
from stgnn_launch.models.registry import ModelSpec
from stgnn_launch.train.run import run_training

# A user's cell outside the package, built from a torch_geometric layer, LSTM-shaped: (H, C) in and out.
USER_CELLS = textwrap.dedent('''
    import torch
    from torch import nn
    from torch_geometric.nn import ChebConv


    class ChebLSTM(nn.Module):
        def __init__(self, in_channels, out_channels, K=2):
            super().__init__()
            self.conv = ChebConv(in_channels + out_channels, 4 * out_channels, K=K)

        def forward(self, X, edge_index, edge_weight=None, H=None, C=None):
            i, f, g, o = self.conv(torch.cat([X, H], -1), edge_index, edge_weight).chunk(4, -1)
            C = torch.sigmoid(f) * C + torch.sigmoid(i) * torch.tanh(g)
            return torch.sigmoid(o) * torch.tanh(C), C


    class HalfWidth(nn.Module):
        """Returns out_channels // 2 features: the adapter must refuse it."""

        def __init__(self, in_channels, out_channels):
            super().__init__()
            self.lin = nn.Linear(in_channels, out_channels // 2)

        def forward(self, X, edge_index, edge_weight=None, H=None):
            return self.lin(X)


    class NoChannels(nn.Module):
        def __init__(self, size):
            super().__init__()
''')

PGT_GCONVGRU = "torch_geometric_temporal.nn.recurrent.GConvGRU"


@pytest.fixture(scope="module")
def user_cells(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cells") / "stgnn_test_user_cells.py"
    path.write_text(USER_CELLS)
    return path


def ring_spec(nodes: int = 6) -> ModelSpec:
    adjacency = (np.roll(np.eye(nodes), 1, axis=1) + 0.5 * np.roll(np.eye(nodes), -1, axis=1)).astype(np.float32)
    return ModelSpec(num_nodes=nodes, in_features=2, out_features=1, window=5, horizon=3, graph=adjacency,
                     steps_per_day=288, tod_channel=1)


@pytest.mark.parametrize("cell", ["default", "user"])
def test_a_batch_is_the_samples_one_at_a_time(user_cells, cell):
    """The batched graph (edge list offset by N per sample) lets no sample see another."""
    torch.manual_seed(0)
    path = {"default": "stgnn_launch.models.pyg_recurrent:GCNGRUCell", "user": f"{user_cells}:ChebLSTM"}[cell]
    model = PygRecurrent(ring_spec(), _cell_=path, hidden=8).eval()
    x = torch.randn(3, 5, 6, 2)
    with torch.no_grad():
        batched = model(x)
        alone = torch.cat([model(x[i:i + 1]) for i in range(3)])
    assert batched.shape == (3, 3, 6, 1)
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-6)
    edge_index, _ = model.graph.get(3, x.device)
    assert edge_index.shape == (2, 3 * 12) and edge_index.max() == 17  # 12 ring edges, 3 copies, 18 nodes


def test_the_default_cell_uses_the_graph():
    """Changing one node's input changes its neighbours' predictions after one step, not the others'."""
    torch.manual_seed(0)
    model = PygRecurrent(ModelSpec(**{**ring_spec().__dict__, "window": 1}), hidden=4).eval()
    x = torch.zeros(1, 1, 6, 2)
    moved = x.clone()
    moved[0, 0, 0, 0] = 1.0  # node 0's edges: 0 -> 1 and 0 -> 5 (adjacency row = source)
    with torch.no_grad():
        delta = (model(moved) - model(x)).abs()[0, 0, :, 0]
    assert (delta[[0, 1, 5]] > 0).all() and (delta[[2, 3, 4]] == 0).all()
    assert isinstance(model.cell, GCNGRUCell)


def train(run_dir: Path, *overrides: str) -> dict:
    cfg = compose_config(*TINY_DATA, *overrides)
    cfg.run_dir = str(run_dir)
    return run_training(cfg, run_dir)


@pytest.fixture(scope="module")
def persistence_mae(tmp_path_factory) -> float:
    return train(tmp_path_factory.mktemp("persistence"), "model=persistence")["test"]["avg"]["mae"]


@pytest.mark.slow
@pytest.mark.parametrize("cell, params", [
    ("stgnn_launch.models.pyg_recurrent:GCNGRUCell", ()),
    ("{user_cells}:ChebLSTM", ("model.params.K=2",)),
])
def test_two_cells_train_and_beat_persistence(tmp_path, user_cells, persistence_mae, cell, params):
    record = train(tmp_path, "model=pyg_recurrent", f"model.cell={cell.format(user_cells=user_cells)}", *params,
                   "model.params.hidden=16", "trainer.lr=0.01", "batching.batch_size=8", "trainer.max_epochs=3")
    assert all(math.isfinite(record["test"][h][k]) for h in ("3", "6", "12", "avg") for k in ("mae", "rmse"))
    assert record["test"]["avg"]["mae"] < persistence_mae


def pgt_import_error() -> str | None:
    try:
        importlib.import_module("torch_geometric_temporal")
    except Exception as err:  # ModuleNotFoundError, or torch-sparse's own import failure
        return f"{type(err).__name__}: {err}"
    return None


@pytest.mark.slow
def test_pytorch_geometric_temporal_gconvgru_trains_on_losloop(tmp_path):
    error = pgt_import_error()
    if error:
        pytest.skip(f"PyTorch Geometric Temporal does not import here ({error}); its __init__ needs torch-sparse, "
                    "which has no wheel for this torch (README, 'Your own model', says how to install it)")
    shared_file("los-loop/los_speed.csv")  # dataset=losloop reads it from ../shared/data
    record = train(tmp_path, "dataset=losloop", "model=pyg_recurrent", f"model.cell={PGT_GCONVGRU}",
                   "model.params.K=2", "model.params.hidden=16", "trainer.max_epochs=1",
                   "trainer.max_batches_per_epoch=8")
    assert math.isfinite(record["test"]["avg"]["mae"])


def test_without_pytorch_geometric_temporal_the_error_says_how_to_install_it():
    if pgt_import_error() is None:
        pytest.skip("PyTorch Geometric Temporal imports here")
    with pytest.raises(UserError) as err:
        PygRecurrent(ring_spec(), _cell_=PGT_GCONVGRU, hidden=4, K=2)
    message = str(err.value)
    assert message.startswith("model.cell: cannot import module 'torch_geometric_temporal.nn.recurrent'")
    assert "pip install torch-geometric-temporal==0.56.2" in message and "torch-sparse" in message


@pytest.mark.parametrize("cell, params, message", [
    ("{user_cells}:HalfWidth", {}, "model.cell {user_cells}:HalfWidth: expected a forward that maps"),
    ("{user_cells}:HalfWidth", {}, "model.cell: expected a hidden state H of shape (B*N) x hidden = (12, 8), "
                                   "found (12, 4)"),
    ("{user_cells}:NoChannels", {}, "model.cell: expected {user_cells}:NoChannels to be built as "
                                    "NoChannels(in_channels=..., out_channels=..., **model.params)"),
    ("{user_cells}:ChebLSTM", {"Q": 3}, "with model.params ['Q'] (hidden is the adapter's: out_channels), "
                                        "found it does not accept that: got an unexpected keyword argument 'Q'"),
    ("stgnn_no_such_cells.Cell", {}, "model.cell: cannot import module 'stgnn_no_such_cells'"),
])
def test_a_wrong_cell_is_one_error_naming_it(user_cells, cell, params, message):
    with pytest.raises(UserError) as err:
        PygRecurrent(ring_spec(), _cell_=cell.format(user_cells=user_cells), hidden=8, **params)
    assert message.format(user_cells=user_cells) in str(err.value)
