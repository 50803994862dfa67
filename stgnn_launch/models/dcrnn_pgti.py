"""The DCRNN configuration of the PGT-I index-batching scaling study ("PGT-I: Scaling Spatiotemporal
GNNs with Memory-Efficient Distributed Training", SC 2025), which trains PyTorch Geometric Temporal's
DCRNN layer (Rozemberczki et al., CIKM 2021) as `DCRNN(2, 2, K=3)` on PeMS.

ONE diffusion-convolutional GRU cell (DCRNN's `DCGRUCell`) whose hidden state, of size `hidden`,
IS the prediction: its first F_out channels. PGT counts the identity as the first of its K
diffusion terms, so K=3 here is DCRNN's max_diffusion_step=2 (x, P x, P^2-like x per direction).

Rollout (this launcher's contract asks for H future steps): the cell runs over the W inputs, then
once more per output step h = 1..H. The input of output step h is the last observed input step with
  - its first F_out channels replaced by the previous prediction (the first F_out channels of the
    hidden state), and
  - the time-of-day covariate advanced to the predicted step's time, (tod + h / steps_per_day) mod 1;
    any other channel (extra measured features, day of week) is held at its last observed value.
This keeps the input width F_in without new parameters and gives the cell the one covariate that is
known in advance. The prediction is the first F_out channels of the new hidden state.

Differences from PGT's layer, kept on purpose: edge weights enter the diffusion (PGT's messages
ignore them), and the study's own script compares the W hidden states directly with the H targets
instead of rolling out. Being a GRU state, each prediction lies in (-1, 1) in z-scored units: a
property of this configuration, which the study shares.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from stgnn_launch.errors import expect
from stgnn_launch.models.dcrnn import DCGRUCell
from stgnn_launch.models.graph_ops import SparseOperators, random_walk_supports
from stgnn_launch.models.registry import ModelSpec, register


@register("dcrnn_pgti")
class DCRNNPGTI(nn.Module):
    """A single DCGRU cell (K=3 PGT terms, hidden 2) whose state is the prediction."""

    trainable = True

    def __init__(self, spec: ModelSpec, *, K: int = 3, hidden: int = 2):  # noqa: N803 (PGT's name)
        super().__init__()
        expect(K >= 1, "model.params.K", "at least 1 diffusion term (PGT counts the identity)", K)
        expect(hidden >= spec.out_features, "model.params.hidden",
               f"at least the {spec.out_features} predicted features (the state is the prediction)", hidden)
        self.horizon, self.out_features = spec.horizon, spec.out_features
        self.hidden = hidden
        self.steps_per_day = spec.steps_per_day
        # Only advance the time of day when the channel is a covariate (after the measured features).
        has_tod = spec.out_features <= spec.tod_channel < spec.in_features
        self.tod_offset = spec.tod_channel - spec.out_features if has_tod else None
        self.graph = SparseOperators(random_walk_supports(spec.adjacency))  # plain attribute, not a buffer
        self.cell = DCGRUCell(spec.in_features, hidden, max_diffusion_step=K - 1, num_supports=len(self.graph))

    def _decoder_rest(self, last: Tensor) -> list[Tensor]:
        """The non-predicted channels of each output step's input (N x B x (F_in - F_out) each)."""
        rest = last[..., self.out_features:]
        if self.tod_offset is None:
            return [rest] * self.horizon
        i = self.tod_offset
        tod = rest[..., i : i + 1]
        return [
            torch.cat([rest[..., :i], torch.remainder(tod + h / self.steps_per_day, 1.0), rest[..., i + 1 :]], -1)
            for h in range(1, self.horizon + 1)
        ]

    def forward(self, x: Tensor, targets: Tensor | None = None) -> Tensor:
        """x: B x W x N x F_in -> B x H x N x F_out. `targets` is unused (no teacher forcing in PGT)."""
        batch, window, nodes, _ = x.shape
        supports = self.graph.on(x)
        steps = x.permute(1, 2, 0, 3)  # W x N x B x F: node-major per step
        h = x.new_zeros(nodes, batch, self.hidden)
        for t in range(window):
            h = self.cell(steps[t], h, supports)
        outputs = []
        for rest in self._decoder_rest(steps[-1]):
            h = self.cell(torch.cat([h[..., : self.out_features], rest], dim=-1), h, supports)
            outputs.append(h[..., : self.out_features])
        return torch.stack(outputs).permute(2, 0, 1, 3)  # B x H x N x F_out
