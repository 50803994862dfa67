"""A3T-GCN: Bai, Zhu et al., "A3T-GCN: Attention Temporal Graph Convolutional Network for Traffic
Forecasting", ISPRS Int. J. Geo-Inf. 2021 (arXiv:2006.11583).

T-GCN hidden states of the whole window are combined by attention instead of taking the last one
(the paper's section 3.4): a score per step e_t = w2 (H_t w1), with w1 mapping each node's hidden
state to one value and w2 the nodes to one score (the shapes of the authors' code), weights
α = softmax(e) over the W steps, context C = sum_t α_t H_t, then T-GCN's linear head.
The paper's biases b1, b2 are left out: they add the same constant to every step's score, which
the softmax cancels, so they could never receive a gradient (an unused parameter under DDP).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from stgnn_launch.models.registry import ModelSpec, register
from stgnn_launch.models.tgcn import TGCN


@register("a3tgcn")
class A3TGCN(TGCN):
    """T-GCN with softmax attention over the W hidden states."""

    trainable = True

    def __init__(self, spec: ModelSpec, *, hidden: int = 64):
        super().__init__(spec, hidden=hidden)
        self.score_hidden = nn.Linear(hidden, 1, bias=False)  # w1
        self.score_nodes = nn.Linear(spec.num_nodes, 1, bias=False)  # w2

    def readout(self, states: list[Tensor]) -> Tensor:
        h = torch.stack(states)  # W x N x B x U
        per_node = self.score_hidden(h).squeeze(-1)  # W x N x B
        scores = self.score_nodes(per_node.transpose(1, 2))  # W x B x 1
        alpha = torch.softmax(scores, dim=0)  # over the W steps, per sample
        return (alpha.unsqueeze(1) * h).sum(dim=0)  # N x B x U
