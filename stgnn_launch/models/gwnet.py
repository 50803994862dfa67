"""Graph WaveNet: Wu, Pan, Long, Jiang, Zhang, "Graph WaveNet for Deep Spatial-Temporal Graph
Modeling", IJCAI 2019 (arXiv:1906.00121), following the authors' code (`gwnet` with "doubletransition"
supports, gcn_bool and addaptadj on).

Input 1x1 conv; `blocks` x `layers` gated dilated TCN layers (tanh * sigmoid, dilations 1, 2, 4, ...
restarting each block) each followed by a diffusion graph convolution over the forward/backward
transition matrices and the self-adaptive adjacency softmax(relu(E1 E2)), a residual connection and
batch norm; skip connections summed over layers; two end 1x1 convs to H x F_out channels. The time
axis is left-padded to the receptive field (13 for the defaults), so W=12 yields one output step.

Two changes that leave the function unchanged: the filter and gate convs are one conv with twice the
channels (same fan-in, hence the same init), and the last layer has no graph conv and no batch norm,
whose outputs the original computes and never uses (they would also be unused parameters under DDP).
The adaptive adjacency is dense by nature; it is built once per forward and shared by all layers.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stgnn_launch.errors import expect
from stgnn_launch.models.graph_ops import (
    SparseMatrix,
    SparseOperators,
    linear_on_blocks,
    random_walk_supports,
    spmm,
)
from stgnn_launch.models.registry import ModelSpec, register


class DiffusionGraphConv(nn.Module):
    """GWNet's `gcn`: [x, A x, A^2 x, ... for each support A] -> 1x1 conv -> dropout.

    Powers, not DCRNN's Chebyshev recursion, as in Graph WaveNet (eq. 6-7). `A x` means the
    reference's einsum('ncvl,vw->ncwl'), i.e. A^T applied along the node axis; the sparse supports
    are stored already transposed, so only the adaptive adjacency needs `.t()`.
    """

    def __init__(self, c_in: int, c_out: int, order: int, num_supports: int, dropout: float):
        super().__init__()
        self.order, self.dropout = order, dropout
        self.mlp = nn.Linear(c_in * (order * num_supports + 1), c_out)

    def forward(self, x: Tensor, supports: list[SparseMatrix], adaptive_t: Tensor | None) -> Tensor:
        """x: B x C x N x T -> B x C_out x N x T."""
        batch, channels, nodes, time = x.shape
        x0 = x.permute(2, 0, 3, 1).reshape(nodes, -1)  # N x (B*T*C): node-major, channels last
        terms = [x0]
        operators = [partial(spmm, a) for a in supports]
        if adaptive_t is not None:
            operators.append(adaptive_t.matmul)
        for apply in operators:
            cur = x0
            for _ in range(self.order):
                cur = apply(cur)
                terms.append(cur)
        h = linear_on_blocks([t.view(nodes, batch, time, channels) for t in terms], self.mlp)  # 1x1 conv
        h = F.dropout(h, self.dropout, self.training)
        return h.permute(1, 3, 0, 2)


@register("gwnet")
class GraphWaveNet(nn.Module):
    """Graph WaveNet with the published defaults (32/32/256/512 channels, 4 blocks x 2 layers)."""

    trainable = True

    def __init__(
        self,
        spec: ModelSpec,
        *,
        residual_channels: int = 32,
        dilation_channels: int = 32,
        skip_channels: int = 256,
        end_channels: int = 512,
        kernel_size: int = 2,
        blocks: int = 4,
        layers: int = 2,
        dropout: float = 0.3,
        embed_dim: int = 10,
        order: int = 2,
        adaptive_adj: bool = True,
    ):
        super().__init__()
        for key, value in (("residual_channels", residual_channels), ("dilation_channels", dilation_channels),
                           ("skip_channels", skip_channels), ("end_channels", end_channels),
                           ("kernel_size", kernel_size), ("blocks", blocks), ("layers", layers),
                           ("embed_dim", embed_dim), ("order", order)):
            expect(value >= 1, f"model.params.{key}", "a positive integer", value)
        expect(0 <= dropout < 1, "model.params.dropout", "a probability in [0, 1)", dropout)
        self.horizon, self.out_features = spec.horizon, spec.out_features
        self.graph = SparseOperators(random_walk_supports(spec.graph))  # plain attribute, not a buffer
        self.adaptive_adj = adaptive_adj
        if adaptive_adj:  # E1, E2 of the self-adaptive adjacency (random init, as the reference)
            self.nodevec1 = nn.Parameter(torch.randn(spec.num_nodes, embed_dim))
            self.nodevec2 = nn.Parameter(torch.randn(embed_dim, spec.num_nodes))
        num_supports = len(self.graph) + int(adaptive_adj)

        dilations = [2**i for _ in range(blocks) for i in range(layers)]
        self.receptive_field = 1 + (kernel_size - 1) * sum(dilations)
        self.start_conv = nn.Conv2d(spec.in_features, residual_channels, 1)
        self.tcn = nn.ModuleList(  # filter and gate in one conv
            nn.Conv2d(residual_channels, 2 * dilation_channels, (1, kernel_size), dilation=(1, d)) for d in dilations
        )
        self.skip_convs = nn.ModuleList(nn.Conv2d(dilation_channels, skip_channels, 1) for _ in dilations)
        self.gconvs = nn.ModuleList(
            DiffusionGraphConv(dilation_channels, residual_channels, order, num_supports, dropout)
            for _ in dilations[:-1]
        )
        self.norms = nn.ModuleList(nn.BatchNorm2d(residual_channels) for _ in dilations[:-1])
        self.end_conv_1 = nn.Conv2d(skip_channels, end_channels, 1)
        self.end_conv_2 = nn.Conv2d(end_channels, spec.horizon * spec.out_features, 1)

    def forward(self, x: Tensor, targets: Tensor | None = None) -> Tensor:
        """x: B x W x N x F_in -> B x H x N x F_out. `targets` is unused."""
        batch, window, nodes, _ = x.shape
        x = x.permute(0, 3, 2, 1)  # B x F x N x W, the reference's layout
        if window < self.receptive_field:
            x = F.pad(x, (self.receptive_field - window, 0))
        x = self.start_conv(x)
        supports = self.graph.on(x)
        adaptive_t = None
        if self.adaptive_adj:  # once per forward, shared by every layer
            adaptive_t = torch.softmax(F.relu(self.nodevec1 @ self.nodevec2), dim=1).t()

        skip = None
        last = len(self.tcn) - 1
        for i, (tcn, skip_conv) in enumerate(zip(self.tcn, self.skip_convs)):
            residual = x
            filt, gate = tcn(x).chunk(2, dim=1)
            x = torch.tanh(filt) * torch.sigmoid(gate)
            s = skip_conv(x)
            skip = s if skip is None else s + skip[..., -s.shape[3]:]
            if i == last:
                break
            x = self.gconvs[i](x, supports, adaptive_t) + residual[..., -x.shape[3]:]
            x = self.norms[i](x)

        # Only the most recent output step is a prediction; end convs need not see the others.
        out = self.end_conv_2(F.relu(self.end_conv_1(F.relu(skip[..., -1:]))))  # B x (H*F_out) x N x 1
        return out.view(batch, self.horizon, self.out_features, nodes).transpose(2, 3)
