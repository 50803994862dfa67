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

How it runs (the same arithmetic as stepping `DCGRUCell`, up to float rounding): diffusion is linear
and acts on each channel alone, so the cell's product D([x, h]) W splits into D(x) W_x + D(h) W_h.
The input terms of all W input steps (and of the known channels of all H output steps) are diffused
and projected at once, before the recurrence; each step then diffuses only its U state channels.
An output step's fed-back prediction is the state's first F_out channels, whose diffusion is already
among the state's terms: its input weights are folded into the state weights. Tensors are laid out
channel-first (C x N x B): one block-diagonal operator (a copy of P per channel) diffuses all channels
in one sparse product, the M terms stack by plain concatenation, and each projection is one wide
(out x M C) @ (M C x N B) product. With PGT's 2 to 4 channels, the node-major layout's tall, skinny
products and interleaving copies are several times slower on CPU.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from stgnn_launch.errors import expect
from stgnn_launch.models.checkpointing import maybe_checkpoint
from stgnn_launch.models.dcrnn import DCGRUCell, diffusion_terms
from stgnn_launch.models.graph_ops import Edges, SparseOperators, random_walk_supports
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
        has_tod = spec.tod_channel is not None and spec.out_features <= spec.tod_channel < spec.in_features
        self.tod_offset = spec.tod_channel - spec.out_features if has_tod else None
        self.graph = SparseOperators(random_walk_supports(spec.graph))  # plain attribute, not a buffer
        self._blocks: dict[int, SparseOperators] = {}  # channels -> the supports for that many, block-diagonal
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
        batch, window, nodes, features = x.shape
        f_out, units = self.out_features, self.hidden
        gates_x, gates_h = _split_columns(self.cell.gates, features, units)  # 2U x M x F_in, 2U x M x U
        cand_x, cand_h = _split_columns(self.cell.candidate, features, units)

        # Input terms of every input step, diffused and projected in one go.
        steps = x.permute(3, 2, 1, 0).reshape(features, nodes, window * batch)  # F_in x N x (W B)
        from_x = self._project_inputs(steps, window, gates_x, cand_x)
        # Output steps: the known channels of all H inputs at once; the fed-back prediction (the
        # state's first F_out channels) reuses the state's terms, through the state weights.
        rest = torch.stack(self._decoder_rest(x[:, -1]))  # H x B x N x (F_in - F_out)
        rest = rest.permute(3, 2, 0, 1).reshape(features - f_out, nodes, self.horizon * batch)
        from_rest = self._project_inputs(rest, self.horizon, gates_x[..., f_out:], cand_x[..., f_out:])
        pad = (0, units - f_out)
        gates_fed = (gates_h + nn.functional.pad(gates_x[..., :f_out], pad)).flatten(1)
        cand_fed = nn.functional.pad(cand_x[..., :f_out], pad).flatten(1)
        gates_h, cand_h = gates_h.flatten(1), cand_h.flatten(1)

        h = x.new_zeros(units, nodes, batch)
        for gate_in, cand_in in zip(*from_x):
            h = maybe_checkpoint(self, self._step, h, gate_in, gates_h, cand_in, cand_h, None)
        outputs = []
        for gate_in, cand_in in zip(*from_rest):
            h = maybe_checkpoint(self, self._step, h, gate_in, gates_fed, cand_in, cand_h, cand_fed)
            outputs.append(h[:f_out])
        return torch.stack(outputs).permute(3, 0, 2, 1)  # H x F_out x N x B -> B x H x N x F_out

    def _terms(self, x: Tensor) -> Tensor:
        """The M diffusion terms of x (C x N x B') stacked as an (M C) x (N B') matrix, row m C + c:
        DCRNN's order, the weight columns' order."""
        channels, nodes, cols = x.shape
        if channels not in self._blocks:
            self._blocks[channels] = SparseOperators([_block_diagonal(e, channels) for e in self.graph.edges])
        supports = self._blocks[channels].on(x)
        terms = diffusion_terms(supports, x.reshape(channels * nodes, cols, 1).contiguous(), self.cell.max_diffusion_step)
        return torch.cat([t.view(channels, nodes * cols) for t in terms])

    def _project_inputs(self, inputs: Tensor, steps: int, gates_w: Tensor,
                        cand_w: Tensor) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
        """Input channels C x N x (S B) of S steps -> their gate and candidate terms, biases included:
        S tensors 2U x N x B, S tensors U x N x B. Diffused once for both layers; with no channels, the
        biases alone. Split and unbound, not indexed: their backward then assembles one gradient
        instead of zero-filling a full-size one per step."""
        channels, nodes, cols = inputs.shape
        bias = torch.cat([self.cell.gates.bias, self.cell.candidate.bias])[:, None]
        if channels == 0:
            out = bias.expand(-1, nodes * cols)
        else:
            out = torch.addmm(bias, torch.cat([gates_w, cand_w]).flatten(1), self._terms(inputs))
        out = out.view(-1, nodes, steps, cols // steps).permute(2, 0, 1, 3).contiguous()  # S x 3U x N x B
        gates, cand = out.split([2 * self.hidden, self.hidden], dim=1)
        return gates.unbind(0), cand.unbind(0)

    def _step(self, h: Tensor, gate_in: Tensor, gate_w: Tensor, cand_in: Tensor, cand_w: Tensor,
              cand_fed_w: Tensor | None) -> Tensor:
        """One GRU step given its projected input terms (2U x N x B, U x N x B): only the state h
        (U x N x B) is diffused. `cand_fed_w`: the candidate's weights of a fed-back prediction (output
        steps), else None."""
        units, nodes, batch = h.shape
        terms_h = self._terms(h)
        ru = torch.sigmoid(torch.addmm(gate_in.reshape(2 * units, -1), gate_w, terms_h))
        r, u = ru.view(2 * units, nodes, batch).split(units)
        cand = cand_in.reshape(units, -1)
        if cand_fed_w is not None:
            cand = torch.addmm(cand, cand_fed_w, terms_h)
        c = torch.tanh(torch.addmm(cand, cand_w, self._terms(r * h))).view(units, nodes, batch)
        return torch.addcmul(c, u, h - c)  # u h + (1 - u) c


def _split_columns(layer: nn.Linear, in_features: int, units: int) -> tuple[Tensor, Tensor]:
    """A DCGRU layer's weight (out x M (F_in + U), column m (F_in + U) + c) as its input part
    out x M x F_in and its state part out x M x U."""
    weight = layer.weight.unflatten(1, (-1, in_features + units))
    return weight[..., :in_features], weight[..., in_features:]


def _block_diagonal(e: Edges, copies: int) -> Edges:
    """kron(I_copies, E): E acting on each of `copies` stacked blocks of n rows."""
    offsets = np.repeat(np.arange(copies, dtype=np.int64) * e.n, len(e.rows))
    return Edges(np.tile(e.rows, copies) + offsets, np.tile(e.cols, copies) + offsets, np.tile(e.vals, copies),
                 e.n * copies)
