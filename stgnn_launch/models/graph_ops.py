"""Graph operators computed once from `spec.graph` (an edge list) and kept sparse.

- GCN normalization D^-1/2 (A + I) D^-1/2 (Kipf & Welling, ICLR 2017), used by T-GCN / A3T-GCN.
- Dual random-walk supports of DCRNN (Li et al., ICLR 2018), as its `calculate_random_walk_matrix`
  computes them and as it uses them, transposed: P_f^T = (D_out^-1 A)^T and P_b^T = (D_in^-1 A^T)^T,
  so that `P^T x` diffuses a signal from each sensor to its downstream neighbours (row = source).
  Graph WaveNet's "doubletransition" supports are the same two operators.

The matrices live in a `SparseOperators` object held as a plain attribute of a model, not as
buffers or parameters: DDP would broadcast buffers every step and checkpoints should hold learnable
state only. They are copied lazily to the device of the input on first use, then cached there.
Nothing here ever builds a dense N x N matrix: the normalizations work on edge lists.

Why not torch_geometric.utils (dense_to_sparse, add_self_loops + gcn_norm, to_torch_csr_tensor), measured
on 325- and 11,160-node graphs: per call they are no faster than these (the dense -> edge list step, which
dominates, is the same torch.nonzero; the rest takes milliseconds), and importing torch_geometric adds
~1.7 s to every process and rank; DCRNN's random walk D^-1 A has no PyG utility (composed from its
scatter it is no faster); to_torch_csr_tensor saves 3 ms at 11,160 nodes by skipping the coalescing
(duplicate edges summed) and index checks that `_csr` makes.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stgnn_launch.data.graph import SparseGraph, as_sparse_graph
from stgnn_launch.errors import UserError

__all__ = [
    "Edges",
    "SparseMatrix",
    "SparseOperators",
    "gcn_normalized",
    "linear_on_blocks",
    "random_walk_supports",
    "spmm",
    "spmm_nodes",
]


@dataclass(frozen=True)
class Edges:
    """An N x N sparse matrix as an edge list (float64 weights; duplicates are summed)."""

    rows: np.ndarray
    cols: np.ndarray
    vals: np.ndarray
    n: int

    @classmethod
    def of(cls, graph: SparseGraph | np.ndarray) -> "Edges":
        """From a SparseGraph, or a dense N x N array (its nonzeros in row-major order)."""
        graph = as_sparse_graph(graph)
        return cls(graph.rows, graph.cols, graph.weights.astype(np.float64), graph.num_nodes)

    def transpose(self) -> "Edges":
        return Edges(self.cols, self.rows, self.vals, self.n)

    def to_dense(self) -> np.ndarray:
        """Dense copy, for tests and debugging only."""
        out = np.zeros((self.n, self.n))
        np.add.at(out, (self.rows, self.cols), self.vals)
        return out


def _safe_inverse(x: np.ndarray, power: float = 1.0) -> np.ndarray:
    """x^-power with 0 where x == 0 (DCRNN: `d_inv[np.isinf(d_inv)] = 0`)."""
    out = np.zeros_like(x)
    nz = x != 0
    out[nz] = np.power(x[nz], -power)
    return out


def nonnegative(a: Edges, normalization: str) -> Edges:
    """Degree normalisations need weights >= 0 (a negative row sum has no D^-1/2; a random walk no
    probabilities): anything else is refused in one line, naming the first offending edge."""
    bad = ~(np.isfinite(a.vals) & (a.vals >= 0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise UserError(f"graph: expected finite non-negative edge weights for {normalization}, found "
                        f"{int(bad.sum())} that are not, e.g. {a.vals[i]:g} from node {int(a.rows[i])} to "
                        f"node {int(a.cols[i])} (fix the adjacency file, e.g. take absolute values or clip at 0)")
    return a


def gcn_normalized(adj: SparseGraph | np.ndarray) -> Edges:
    """D^-1/2 (A + I) D^-1/2 with D the row sums of A + I (Kipf & Welling 2017; T-GCN's code).

    I is added even where A already has self-loops (METR-LA's does), as T-GCN does. With A >= 0 (checked)
    every row of A + I sums to at least 1, so a sensor without edges keeps its own signal.
    """
    a = nonnegative(Edges.of(adj), "the symmetric normalisation D^-1/2 (A + I) D^-1/2")
    diag = np.arange(a.n, dtype=np.int64)
    rows = np.concatenate([a.rows, diag])
    cols = np.concatenate([a.cols, diag])
    vals = np.concatenate([a.vals, np.ones(a.n)])
    d_inv_sqrt = _safe_inverse(np.bincount(rows, weights=vals, minlength=a.n), 0.5)
    return Edges(rows, cols, d_inv_sqrt[rows] * vals * d_inv_sqrt[cols], a.n)


def _random_walk(a: Edges) -> Edges:
    """D^-1 A with D the row sums of A: DCRNN's `calculate_random_walk_matrix`."""
    d_inv = _safe_inverse(np.bincount(a.rows, weights=a.vals, minlength=a.n))
    return Edges(a.rows, a.cols, d_inv[a.rows] * a.vals, a.n)


def random_walk_supports(adj: SparseGraph | np.ndarray) -> list[Edges]:
    """DCRNN's "dual_random_walk" supports, transposed as DCRNN applies them: [P_f^T, P_b^T]. A sensor
    without outgoing (incoming) edges gets a zero row there, as in DCRNN's code (its inputs then reach the
    next layer only through the diffusion's 0th step)."""
    a = nonnegative(Edges.of(adj), "the random-walk normalisation D^-1 A")
    return [_random_walk(a).transpose(), _random_walk(a.transpose()).transpose()]


def _csr(e: Edges, device: torch.device, dtype: torch.dtype) -> Tensor:
    index = torch.from_numpy(np.stack([e.rows, e.cols]))
    coo = torch.sparse_coo_tensor(index, torch.from_numpy(e.vals), (e.n, e.n), check_invariants=True)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": CSR is the fast CPU/CUDA spmm path
        warnings.simplefilter("ignore", UserWarning)
        return coo.coalesce().to(dtype).to_sparse_csr().to(device)


@dataclass(frozen=True)
class SparseMatrix:
    """A sparse N x N matrix in CSR, as its three component tensors, with its transpose's (the backward
    pass's). Plain dense tensors, so that torch.compile traces a model holding them: the product itself is
    the `stgnn::csr_mm` operator, which dynamo keeps in its graph as one opaque call."""

    crow: Tensor
    col: Tensor
    values: Tensor
    crow_t: Tensor
    col_t: Tensor
    values_t: Tensor

    @classmethod
    def build(cls, e: Edges, device: torch.device, dtype: torch.dtype) -> "SparseMatrix":
        a, t = _csr(e, device, dtype), _csr(e.transpose(), device, dtype)
        parts = (a.crow_indices(), a.col_indices(), a.values(), t.crow_indices(), t.col_indices(), t.values())
        return cls(*(p.clone() for p in parts))  # plain tensors of their own, not views into a sparse one

    @property
    def mat(self) -> Tensor:
        return _csr_tensor(self.crow, self.col, self.values)

    @property
    def mat_t(self) -> Tensor:
        return _csr_tensor(self.crow_t, self.col_t, self.values_t)

    @property
    def num_nodes(self) -> int:
        return self.crow.shape[0] - 1


def _csr_tensor(crow: Tensor, col: Tensor, values: Tensor) -> Tensor:
    n = crow.shape[0] - 1
    return torch.sparse_csr_tensor(crow, col, values, (n, n), check_invariants=False)  # views, no copy


@torch.library.custom_op("stgnn::csr_mm", mutates_args=())
def csr_mm(crow: Tensor, col: Tensor, values: Tensor, crow_t: Tensor, col_t: Tensor, values_t: Tensor,
           dense: Tensor) -> Tensor:
    """A @ dense for the CSR matrix A = (crow, col, values); (crow_t, col_t, values_t) is A^T, for the
    backward. The same sparse kernel as before (torch.sparse.mm), registered as an operator: torch.compile
    treats it as one call instead of breaking its graph at a sparse tensor."""
    return torch.sparse.mm(_csr_tensor(crow, col, values), dense)


@csr_mm.register_fake
def _csr_mm_shape(crow, col, values, crow_t, col_t, values_t, dense):
    return dense.new_empty((crow.shape[0] - 1, dense.shape[1]))


def _csr_mm_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs[:6])


def _csr_mm_backward(ctx, grad: Tensor):
    crow, col, values, crow_t, col_t, values_t = ctx.saved_tensors
    return None, None, None, None, None, None, csr_mm(crow_t, col_t, values_t, crow, col, values, grad.contiguous())


csr_mm.register_autograd(_csr_mm_backward, setup_context=_csr_mm_setup)


def _compute_dtype(x: Tensor) -> torch.dtype:
    """float64 stays float64; everything else (float32, bf16/fp16 under autocast) runs in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


class SparseOperators:
    """A fixed list of sparse N x N operators, materialized lazily per (device, dtype).

    Pickles (and deep-copies) as its edge lists: CSR tensors themselves cannot be deep-copied.
    """

    def __init__(self, edges: list[Edges]):
        self.edges = list(edges)
        self._cache: dict[tuple[torch.device, torch.dtype], list[SparseMatrix]] = {}

    def __len__(self) -> int:
        return len(self.edges)

    def on(self, like: Tensor) -> list[SparseMatrix]:
        """The operators on `like`'s device, in the dtype `spmm` computes in for `like`."""
        key = (like.device, _compute_dtype(like))
        if key not in self._cache:
            self._cache[key] = [SparseMatrix.build(e, *key) for e in self.edges]
        return self._cache[key]

    def __getstate__(self) -> dict:
        return {"edges": self.edges}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["edges"])


def spmm(a: SparseMatrix, x: Tensor) -> Tensor:
    """A @ x for x of shape N x M. Runs in float32 (or float64) with autocast off: sparse kernels
    have no bf16 path everywhere, and the next dense layer casts back under autocast."""
    x = x.to(a.values.dtype)
    parts = (a.crow, a.col, a.values, a.crow_t, a.col_t, a.values_t)
    if torch.is_autocast_enabled(x.device.type):
        with torch.autocast(x.device.type, enabled=False):
            return csr_mm(*parts, x)
    return csr_mm(*parts, x)


def spmm_nodes(a: SparseMatrix, x: Tensor, node_dim: int = 1) -> Tensor:
    """A applied along the node axis of x (B x N x C by default; any shape with N at `node_dim`).

    Moves the node axis first, flattens the rest to N x (B*C), one sparse mm, and restores the shape.
    With node_dim=0 (node-major layout, as the RNNs here keep their states) no copy is needed.
    """
    moved = x.movedim(node_dim, 0)
    out = spmm(a, moved.reshape(moved.shape[0], -1))
    return out.reshape(moved.shape).movedim(0, node_dim)


def linear_on_blocks(blocks: list[Tensor], layer: nn.Linear) -> Tensor:
    """layer(torch.cat(blocks, -1)) without building the concatenation: sum_m X_m W_m^T + b.

    The blocks (diffusion terms) share one shape ... x C; block m meets the weight columns
    m*C:(m+1)*C. Skipping the M-times-wider copy, and the strided gradient slices out of it,
    makes the diffusion convolutions of DCRNN and Graph WaveNet about a quarter faster on CPU.
    """
    width = blocks[0].shape[-1]
    # unbind, not slicing: its backward stacks the M gradients once instead of M zero-filled copies
    weights = layer.weight.unflatten(1, (len(blocks), width)).unbind(1)
    out = F.linear(blocks[0].reshape(-1, width), weights[0], layer.bias)
    for block, weight in zip(blocks[1:], weights[1:]):  # out of place: autocast-safe
        out = torch.addmm(out, block.reshape(-1, width), weight.t())
    return out.view(*blocks[0].shape[:-1], -1)
