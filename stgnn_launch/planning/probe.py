"""A model's activations, measured: one forward + backward of the real model class (custom ones included)
on a few tiny batches with a few nodes, counting the bytes the autograd graph saves for the backward pass
(torch's dispatch mode, each storage once, parameters excluded). The count is fitted as

    activations(B, N) = c_bn * B * N + (a + b * N + c * N^2)

from four probes ((2, n1), (2, n2), (2, n3), (4, n3)): per sample and node, plus whatever does not
depend on the batch (an adaptive N x N adjacency, say). With `trainer.activation_checkpointing`, a probe
also counts the steps `maybe_checkpoint` wrapped, and the peak becomes what is saved outside them, plus
their inputs, plus ONE step's insides (recomputed one at a time in the backward pass).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode

from stgnn_launch.config.schema import Config
from stgnn_launch.data.graph import SparseGraph
from stgnn_launch.planning.layout import covariate_count, prepare_spec

PROBE_NODES = (32, 96, 256)  # wide apart, so that an N^2 term (an adaptive adjacency) shows
PROBE_BATCHES = (2, 4)


@dataclass(frozen=True)
class ActivationProfile:
    """A model's saved-for-backward bytes and parameters as functions of the batch and the nodes."""

    per_sample_node: float  # bytes per (sample, node)
    fixed: tuple[float, float, float]  # a + b N + c N^2, independent of the batch
    params: tuple[float, float]  # parameter count a + b N

    def activation_bytes(self, batch: int, nodes: int) -> int:
        a, b, c = self.fixed
        return max(0, int(self.per_sample_node * batch * nodes + max(0.0, a + b * nodes + c * nodes * nodes)))

    def parameters(self, nodes: int) -> int:
        return max(0, int(self.params[0] + self.params[1] * nodes))


def _probe_graph(n: int, degree: int = 8) -> SparseGraph:
    """A directed ring with `degree` neighbours ahead, weights in (0, 1], diagonal 1 (DCRNN's kernel style)."""
    ahead = np.arange(min(degree, n - 1) + 1)
    rows = np.repeat(np.arange(n), ahead.size)
    cols = (rows + np.tile(ahead, n)) % n
    order = np.lexsort((cols, rows))  # row-major, as a dense matrix's nonzeros
    return SparseGraph(rows[order], cols[order], np.exp(-0.1 * np.tile(ahead, n))[order], n)


class _LiveBytes(TorchDispatchMode):
    """The peak of bytes held by tensors created inside the mode: every op's outputs are recorded by
    storage (weakly), and after each op the storages still alive are summed. Storages that autograd
    keeps for the backward pass stay alive, so this sees the forward's saved activations, the
    backward's gradients and every op's temporaries, as the allocator would."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.layout == torch.strided:
                storage = t.untyped_storage()
                if storage.data_ptr() not in self.live:
                    self.live[storage.data_ptr()] = (StorageWeakRef(storage), storage.nbytes())
        self.live = {k: v for k, v in self.live.items() if not v[0].expired()}
        self.peak = max(self.peak, sum(n for _, n in self.live.values()))
        return out


def _step_peak(cfg: Config, in_features: int, out_features: int, batch: int, nodes: int) -> tuple[int, int]:
    """(peak bytes of one training step's tensors, parameters) on a tiny random batch."""
    from stgnn_launch.models.checkpointing import enable_activation_checkpointing
    from stgnn_launch.models.registry import ModelSpec, build_model

    b = cfg.batching
    spec = ModelSpec(num_nodes=nodes, in_features=in_features, out_features=out_features, window=b.window,
                     horizon=b.horizon, graph=_probe_graph(nodes), steps_per_day=288,
                     tod_channel=out_features if in_features > out_features else None)
    model = build_model(cfg.model.name, spec, dict(cfg.model.params))
    params = sum(p.numel() for p in model.parameters())
    if not getattr(model, "trainable", True):
        return 0, params
    enable_activation_checkpointing(model, cfg.trainer.activation_checkpointing)
    model.train()
    x = torch.rand(batch, b.window, nodes, in_features)
    y = torch.rand(batch, b.horizon, nodes, out_features)
    tracker = _LiveBytes()
    with tracker:
        loss = (model(x, targets=y).float() - y).abs().mean()
        loss.backward()
    return tracker.peak, params


def probe_activations(cfg: Config, in_features: int, out_features: int) -> ActivationProfile:
    """The model's ActivationProfile from a few tiny training steps (seconds; the random state is kept)."""
    points = [(PROBE_BATCHES[0], n) for n in PROBE_NODES] + [(PROBE_BATCHES[1], PROBE_NODES[-1])]
    measured: dict[tuple[int, int], float] = {}
    params: dict[int, int] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: more threads would only contend
    try:
        with torch.random.fork_rng(devices=[]):  # CPU only: no warning per GPU, no CUDA touched
            torch.manual_seed(0)
            for batch, nodes in points:
                peak, params[nodes] = _step_peak(cfg, in_features, out_features, batch, nodes)
                measured[(batch, nodes)] = float(peak)
    finally:
        torch.set_num_threads(threads)
    b0, b1 = PROBE_BATCHES
    n0 = PROBE_NODES[-1]  # the per-sample slope where nodes weigh most
    per = (measured[(b1, n0)] - measured[(b0, n0)]) / ((b1 - b0) * n0)
    fixed = [measured[(b0, n)] - per * b0 * n for n in PROBE_NODES]
    nodes = np.array(PROBE_NODES, dtype=float)
    c, b, a = np.polyfit(nodes, np.array(fixed), 2)
    if not c * nodes[-1] ** 2 > 0.25 * abs(fixed[-1]):  # no real N^2 term: the peak's own jitter, fit a line
        c, (b, a) = 0.0, np.polyfit(nodes, np.array(fixed), 1)
    lin = np.polyfit(np.array(PROBE_NODES, dtype=float), np.array([params[n] for n in PROBE_NODES], float), 1)
    return ActivationProfile(per_sample_node=max(0.0, per), fixed=(float(a), float(b), float(c)),
                             params=(float(lin[1]), float(lin[0])))


def in_out_features(cfg: Config, shape: tuple[int, int, int]) -> tuple[int, int]:
    return shape[2] + covariate_count(cfg), prepare_spec(cfg).out_features
