"""DCRNN: Li, Yu, Shahabi, Liu, "Diffusion Convolutional Recurrent Neural Network: Data-Driven
Traffic Forecasting", ICLR 2018 (arXiv:1707.01926), following the authors' reference code.

Sequence to sequence: an encoder and a decoder, each `num_rnn_layers` diffusion-convolutional GRU
cells (DCGRU) with dual random-walk diffusion of `max_diffusion_step` K steps. The decoder starts
from a GO symbol of zeros and is fed its previous output, or during training, with probability
p = k / (k + exp(batches_seen / k)), the true previous value (scheduled sampling, inverse-sigmoid
decay). A linear projection maps the top layer's state to F_out.

One deliberate difference from the reference code: there, the second support's Chebyshev recursion
starts from the first one's leftovers (x0 is not reset between supports); here each support starts
from the cell input, as the paper's diffusion convolution and the recursion stated below intend.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from stgnn_launch.errors import expect
from stgnn_launch.models.checkpointing import maybe_checkpoint
from stgnn_launch.models.host_state import HostState
from stgnn_launch.models.graph_ops import (
    SparseMatrix,
    SparseOperators,
    linear_on_blocks,
    random_walk_supports,
    spmm,
)
from stgnn_launch.models.registry import ModelSpec, register


def diffusion_terms(supports: list[SparseMatrix], x: Tensor, max_diffusion_step: int) -> list[Tensor]:
    """The M = len(supports) * K + 1 diffusion terms of x (N x B x C, node-major), each N x B x C.

    Per support P: x1 = P x0, xk = 2 P x_{k-1} - x_{k-2} (DCRNN's Chebyshev-like recursion).
    DCRNN stacks them and applies one weight matrix; `linear_on_blocks` does the same product
    without materializing the stack (feature index m * C + c; DCRNN's code orders it c * M + m).
    """
    nodes, batch, channels = x.shape
    x0 = x.reshape(nodes, batch * channels)
    terms = [x0]
    for p in supports if max_diffusion_step > 0 else []:
        prev, cur = x0, spmm(p, x0)
        terms.append(cur)
        for _ in range(2, max_diffusion_step + 1):
            prev, cur = cur, 2.0 * spmm(p, cur) - prev
            terms.append(cur)
    return [t.view(nodes, batch, channels) for t in terms]


class DCGRUCell(nn.Module):
    """DCGRU: a GRU whose matrix products are diffusion convolutions over [x, h] (DCRNN eq. 3).

    Inputs and states are node-major: x N x B x F, h N x B x U. Weights are xavier-normal,
    gate biases start at 1 and candidate biases at 0, as in the reference code.
    """

    def __init__(self, input_size: int, hidden_size: int, max_diffusion_step: int, num_supports: int = 2):
        super().__init__()
        self.hidden_size = hidden_size
        self.max_diffusion_step = max_diffusion_step
        num_matrices = num_supports * max_diffusion_step + 1
        features = (input_size + hidden_size) * num_matrices
        self.gates = nn.Linear(features, 2 * hidden_size)
        self.candidate = nn.Linear(features, hidden_size)
        for layer, bias in ((self.gates, 1.0), (self.candidate, 0.0)):
            nn.init.xavier_normal_(layer.weight)
            nn.init.constant_(layer.bias, bias)

    def forward(self, x: Tensor, h: Tensor, supports: list[SparseMatrix]) -> Tensor:
        k = self.max_diffusion_step
        ru = torch.sigmoid(linear_on_blocks(diffusion_terms(supports, torch.cat([x, h], dim=-1), k), self.gates))
        r, u = ru.split(self.hidden_size, dim=-1)
        c = torch.tanh(linear_on_blocks(diffusion_terms(supports, torch.cat([x, r * h], dim=-1), k), self.candidate))
        return u * h + (1.0 - u) * c


def inverse_sigmoid_decay(batches_seen: int | Tensor, cl_decay_steps: float) -> Tensor:
    """Scheduled sampling's p = k / (k + exp(b / k)) (Bengio et al. 2015), computed as
    sigmoid(ln k - b / k) so that it never overflows."""
    b = torch.as_tensor(batches_seen, dtype=torch.float64)
    return torch.sigmoid(math.log(cl_decay_steps) - b / cl_decay_steps)


@register("dcrnn")
class DCRNN(HostState):
    """DCRNN encoder-decoder with scheduled sampling; `batches_seen` is checkpointed state."""

    trainable = True

    def __init__(self, spec: ModelSpec, *, rnn_units: int = 64, num_rnn_layers: int = 2, max_diffusion_step: int = 2,
                 cl_decay_steps: int = 2000, use_curriculum_learning: bool = True):
        super().__init__()
        expect(rnn_units >= 1, "model.params.rnn_units", "a positive number of units", rnn_units)
        expect(num_rnn_layers >= 1, "model.params.num_rnn_layers", "at least 1 layer", num_rnn_layers)
        expect(max_diffusion_step >= 0, "model.params.max_diffusion_step", "0 or more", max_diffusion_step)
        expect(cl_decay_steps > 0, "model.params.cl_decay_steps", "a positive number of batches", cl_decay_steps)
        self.horizon, self.out_features = spec.horizon, spec.out_features
        self.rnn_units = rnn_units
        self.cl_decay_steps = cl_decay_steps
        self.use_curriculum_learning = use_curriculum_learning
        self.graph = SparseOperators(random_walk_supports(spec.graph))  # plain attribute, not a buffer

        def stack(first_input: int) -> nn.ModuleList:
            sizes = [first_input] + [rnn_units] * (num_rnn_layers - 1)
            return nn.ModuleList(DCGRUCell(s, rnn_units, max_diffusion_step, len(self.graph)) for s in sizes)

        self.encoder = stack(spec.in_features)
        self.decoder = stack(spec.out_features)
        self.projection = nn.Linear(rnn_units, spec.out_features)
        # Counted on the host and saved as the module's extra state, so that a resumed run continues the same
        # sampling schedule: no device op per step, and no buffer for DDP to broadcast before every forward.
        self.batches_seen = 0

    host_state = (("batches_seen", int),)

    def teacher_forcing_probability(self) -> Tensor:
        """The probability of feeding the truth at the current `batches_seen` (1 without curriculum,
        as in the reference TensorFlow code, which then always feeds the truth in training); a host scalar."""
        if not self.use_curriculum_learning:
            return torch.ones((), dtype=torch.float64)
        return inverse_sigmoid_decay(self.batches_seen, self.cl_decay_steps)

    @staticmethod
    def _step(cells: nn.ModuleList, inp: Tensor, states: list[Tensor], supports: list[SparseMatrix]) -> Tensor:
        for layer, cell in enumerate(cells):
            states[layer] = inp = maybe_checkpoint(cell, cell, inp, states[layer], supports)
        return inp

    def forward(self, x: Tensor, targets: Tensor | None = None) -> Tensor:
        """x: B x W x N x F_in -> B x H x N x F_out. Teacher forcing only in training with targets."""
        batch, window, nodes, _ = x.shape
        supports = self.graph.on(x)
        states = [x.new_zeros(nodes, batch, self.rnn_units) for _ in self.encoder]
        steps = x.permute(1, 2, 0, 3)  # W x N x B x F: node-major per step
        for t in range(window):
            self._step(self.encoder, steps[t], states, supports)

        use_truth = self._advance(x.device, targets is not None) if self.training else None
        if use_truth is not None:
            truth = targets.permute(1, 2, 0, 3)  # H x N x B x F_out

        inp = x.new_zeros(nodes, batch, self.out_features)  # GO symbol
        outputs = []
        for t in range(self.horizon):
            out = self.projection(self._step(self.decoder, inp, states, supports))
            outputs.append(out)
            inp = out if use_truth is None else torch.where(use_truth[t], truth[t], out)
        return torch.stack(outputs).permute(2, 0, 1, 3)  # B x H x N x F_out

    @torch.compiler.disable
    def _advance(self, device: torch.device, draw: bool) -> Tensor | None:
        """A training forward: this batch's coins (one per decoder step, drawn on the input's device,
        reproducible from torch.manual_seed, the device generator checkpointed per rank) against the host
        probability at the current count, then the count advanced; no host sync. Outside compiled graphs:
        the host count would otherwise be baked into the graph and recompile it every step."""
        use_truth = torch.rand(self.horizon, device=device) < float(self.teacher_forcing_probability()) \
            if draw else None
        self.batches_seen += 1
        return use_truth
