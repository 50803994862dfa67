"""model=pyg_recurrent: a PyTorch Geometric style recurrent graph cell as encoder, a linear readout to the horizon.

    stgnn-train model=pyg_recurrent model.cell=torch_geometric_temporal.nn.recurrent.GConvGRU model.params.K=2

The cell is built as `Cell(in_channels=F_in, out_channels=model.params.hidden, **other model.params)` and
called once per input step as PyTorch Geometric Temporal's cells are: `H = cell(X, edge_index, edge_weight, H)`,
or `H, C = cell(X, edge_index, edge_weight, H, C)` when its forward has a `C` argument (GConvLSTM, GCLSTM).
X is (B*N) x F_in: the B graphs of a batch are one graph of B*N nodes whose edge list is the dataset's,
offset by N per sample; it is built with one tensor operation per batch size and cached, never per sample
or per step. Edge weights are the adjacency's raw weights (edge_index[0] = source = adjacency row); the
cell normalizes them as it does on any PyG graph. A linear layer maps each node's last H to H x F_out.

Supported: cells with the signature above, e.g. PyTorch Geometric Temporal's GConvGRU, GConvLSTM, GCLSTM,
TGCN and DCRNN (whose DConv builds a dense (B*N)^2 adjacency each step: small graphs only; model=dcrnn is
the sparse one), and `GCNGRUCell` below. Not supported: cells with other inputs (A3TGCN's periods,
AGCRN's embeddings, LRGCN's edge types, EvolveGCN, MPNNLSTM) or batch-shaped ones (TGCN2, A3TGCN2).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor, nn

from stgnn_launch.errors import expect
from stgnn_launch.models.custom import check_output_shape, construct, load_object
from stgnn_launch.data.graph import SparseGraph
from stgnn_launch.models.registry import ModelSpec, register

DEFAULT_CELL = "stgnn_launch.models.pyg_recurrent:GCNGRUCell"


class GCNGRUCell(nn.Module):
    """A T-GCN-style GRU cell on PyG's GCNConv, with PyTorch Geometric Temporal's call signature:
    z, r = σ(GCN([X, H])); H~ = tanh(GCN([X, r*H])); H' = z H + (1 - z) H~."""

    def __init__(self, in_channels: int, out_channels: int, improved: bool = False):
        super().__init__()
        from torch_geometric.nn import GCNConv  # imported here: torch_geometric takes seconds to import

        self.out_channels = out_channels
        self.gates = GCNConv(in_channels + out_channels, 2 * out_channels, improved=improved)
        self.candidate = GCNConv(in_channels + out_channels, out_channels, improved=improved)

    def forward(self, X: Tensor, edge_index: Tensor, edge_weight: Tensor | None = None,
                H: Tensor | None = None) -> Tensor:
        if H is None:
            H = X.new_zeros(X.shape[0], self.out_channels)
        z, r = torch.sigmoid(self.gates(torch.cat([X, H], -1), edge_index, edge_weight)).chunk(2, -1)
        candidate = torch.tanh(self.candidate(torch.cat([X, r * H], -1), edge_index, edge_weight))
        return z * H + (1 - z) * candidate


class BatchedGraph:
    """The dataset's edge list repeated for B samples (node ids offset by N), cached per (B, device).

    A plain attribute of the model, not buffers: DDP would broadcast buffers, checkpoints skip it."""

    def __init__(self, graph: SparseGraph):
        self.num_nodes = graph.num_nodes
        self.edge_index, self.edge_weight = graph.edge_index()
        self._cache: dict[tuple[int, torch.device], tuple[Tensor, Tensor]] = {}

    def get(self, batch: int, device: torch.device) -> tuple[Tensor, Tensor]:
        key = (batch, device)
        if key not in self._cache:
            if len(self._cache) >= 4:  # train, eval and last-batch sizes; never grows with the epochs
                self._cache.pop(next(iter(self._cache)))
            offsets = torch.arange(batch).repeat_interleave(self.edge_index.shape[1]) * self.num_nodes
            edge_index = self.edge_index.repeat(1, batch) + offsets
            self._cache[key] = (edge_index.to(device), self.edge_weight.repeat(batch).to(device))
        return self._cache[key]


@register("pyg_recurrent")
class PygRecurrent(nn.Module):
    """Encoder: the cell over the W input steps on the batched graph; readout: Linear(hidden, H x F_out)."""

    trainable = True

    def __init__(self, spec: ModelSpec, _cell_: str = DEFAULT_CELL, *, hidden: int = 32, **cell_params: Any):
        super().__init__()
        expect(hidden >= 1, "model.params.hidden", "a positive number of units", hidden)
        cls = load_object(_cell_, "model.cell")
        name = getattr(cls, "__name__", _cell_)
        contract = (f"{name}(in_channels=..., out_channels=..., **model.params) with model.params "
                    f"{sorted(cell_params)} (hidden is the adapter's: out_channels)")
        self.cell = construct(cls, "model.cell", _cell_, contract, in_channels=spec.in_features,
                              out_channels=hidden, **cell_params)
        self.with_cell_state = "C" in inspect.signature(self.cell.forward).parameters
        self.hidden, self.horizon, self.out_features = hidden, spec.horizon, spec.out_features
        self.graph = BatchedGraph(spec.graph)
        self.readout = nn.Linear(hidden, spec.horizon * spec.out_features)
        check_output_shape(self, spec, f"model.cell {_cell_}")

    def forward(self, x: Tensor, targets: Tensor | None = None) -> Tensor:
        batch, window, nodes, features = x.shape
        edge_index, edge_weight = self.graph.get(batch, x.device)
        h = x.new_zeros(batch * nodes, self.hidden)
        c = x.new_zeros(batch * nodes, self.hidden) if self.with_cell_state else None
        for t in range(window):
            x_t = x[:, t].reshape(batch * nodes, features)
            if c is not None:
                h, c = self.cell(x_t, edge_index, edge_weight, h, c)
            else:
                out = self.cell(x_t, edge_index, edge_weight, h)
                h = out[0] if isinstance(out, tuple) else out
        expect(h.shape == (batch * nodes, self.hidden), "model.cell", f"a hidden state H of shape (B*N) x hidden = "
               f"{(batch * nodes, self.hidden)}", tuple(h.shape))
        y = self.readout(h).view(batch, nodes, self.horizon, self.out_features)
        return y.transpose(1, 2)
