"""T-GCN: Zhao et al., "T-GCN: A Temporal Graph Convolutional Network for Traffic Prediction",
IEEE T-ITS 2019 (arXiv:1811.05320).

A GRU whose gates are graph convolutions over [x_t, h_{t-1}] with the normalized adjacency
Â = D^-1/2 (A + I) D^-1/2, run over the W input steps; a linear head maps the last hidden state of
each node to its H x F_out predictions. As in the authors' code, each gate is one graph convolution
layer Â [x, h] W + b (the paper's equation shows a two-layer GCN); gate biases start at 1.

States are kept node-major (N x B x C) so that every sparse product is one `torch.sparse.mm`
without any transposition inside the time loop.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from stgnn_launch.errors import expect
from stgnn_launch.models.checkpointing import maybe_checkpoint
from stgnn_launch.models.graph_ops import SparseMatrix, SparseOperators, gcn_normalized, spmm_nodes
from stgnn_launch.models.registry import ModelSpec, register


class TGCNCell(nn.Module):
    """One T-GCN step: r, u = σ(Â[x, h] W_g + b_g); c = tanh(Â[x, r*h] W_c + b_c); h' = u h + (1-u) c."""

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.hidden_size = hidden_size
        self.gates = nn.Linear(input_size + hidden_size, 2 * hidden_size)
        self.candidate = nn.Linear(input_size + hidden_size, hidden_size)
        for layer, bias in ((self.gates, 1.0), (self.candidate, 0.0)):  # T-GCN's initialization
            nn.init.xavier_uniform_(layer.weight)
            nn.init.constant_(layer.bias, bias)

    def forward(self, x: Tensor, h: Tensor, a_hat: SparseMatrix) -> Tensor:
        """x: N x B x F, h: N x B x U (node-major) -> new h: N x B x U."""
        ru = torch.sigmoid(self.gates(spmm_nodes(a_hat, torch.cat([x, h], dim=-1), node_dim=0)))
        r, u = ru.split(self.hidden_size, dim=-1)
        c = torch.tanh(self.candidate(spmm_nodes(a_hat, torch.cat([x, r * h], dim=-1), node_dim=0)))
        return u * h + (1.0 - u) * c


@register("tgcn")
class TGCN(nn.Module):
    """T-GCN encoder over the window, then a per-node linear head to all H x F_out outputs."""

    trainable = True

    def __init__(self, spec: ModelSpec, *, hidden: int = 64):
        super().__init__()
        expect(hidden >= 1, "model.params.hidden", "a positive number of units", hidden)
        self.horizon, self.out_features = spec.horizon, spec.out_features
        self.hidden = hidden
        self.graph = SparseOperators([gcn_normalized(spec.graph)])  # plain attribute, not a buffer
        self.cell = TGCNCell(spec.in_features, hidden)
        self.head = nn.Linear(hidden, spec.horizon * spec.out_features)

    def encode(self, x: Tensor) -> list[Tensor]:
        """x: B x W x N x F_in -> the W hidden states, each N x B x U."""
        batch, window, nodes, _ = x.shape
        (a_hat,) = self.graph.on(x)
        steps = x.permute(1, 2, 0, 3)  # W x N x B x F: node-major per step
        h = x.new_zeros(nodes, batch, self.hidden)
        states = []
        for t in range(window):
            h = maybe_checkpoint(self.cell, self.cell, steps[t], h, a_hat)
            states.append(h)
        return states

    def readout(self, states: list[Tensor]) -> Tensor:
        """The summary of the window fed to the head: T-GCN uses the last hidden state."""
        return states[-1]

    def forward(self, x: Tensor, targets: Tensor | None = None) -> Tensor:
        """x: B x W x N x F_in -> B x H x N x F_out (z-scored). `targets` is unused."""
        out = self.head(self.readout(self.encode(x)))  # N x B x (H * F_out)
        nodes, batch = out.shape[:2]
        return out.view(nodes, batch, self.horizon, self.out_features).permute(1, 2, 0, 3)
