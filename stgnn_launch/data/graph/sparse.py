"""A sensor graph as an edge list: road graphs are sparse, and a dense 11,160 x 11,160 PeMS adjacency
would be 498 MB beside the series in every process that holds one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from stgnn_launch.errors import UserError


@dataclass(frozen=True, eq=False)
class SparseGraph:
    """An N x N weighted adjacency as its nonzero entries, in row-major order (row = source sensor)."""

    rows: np.ndarray  # E int64
    cols: np.ndarray  # E int64
    weights: np.ndarray  # E float32
    num_nodes: int

    def __post_init__(self) -> None:
        for name in ("rows", "cols"):
            object.__setattr__(self, name, np.ascontiguousarray(getattr(self, name), dtype=np.int64))
        object.__setattr__(self, "weights", np.ascontiguousarray(self.weights, dtype=np.float32))
        if not self.rows.shape == self.cols.shape == self.weights.shape or self.rows.ndim != 1:
            raise UserError(f"graph edge list: expected rows, cols and weights of one length, found "
                            f"{self.rows.shape}, {self.cols.shape}, {self.weights.shape}")
        if self.rows.size and (min(self.rows.min(), self.cols.min()) < 0
                               or max(self.rows.max(), self.cols.max()) >= self.num_nodes):
            raise UserError(f"graph edge list: expected node indices in [0, {self.num_nodes}), found "
                            f"{min(self.rows.min(), self.cols.min())}..{max(self.rows.max(), self.cols.max())}")

    @classmethod
    def from_dense(cls, adjacency: np.ndarray) -> "SparseGraph":
        return cls.from_row_blocks(adjacency.shape[0], lambda start, stop: adjacency[start:stop])

    @classmethod
    def from_row_blocks(cls, n: int, read_rows: Callable[[int, int], np.ndarray],
                        block_bytes: int = 64 * 2**20) -> "SparseGraph":
        """The nonzeros of an N x N matrix read `block_bytes` of rows at a time (an HDF5 dataset, an array):
        the dense matrix is never whole in memory."""
        block = max(1, block_bytes // max(1, 4 * n))
        rows, cols, weights = [], [], []
        for start in range(0, n, block):
            part = np.asarray(read_rows(start, min(n, start + block)), dtype=np.float32)
            if part.shape[1:] != (n,):
                raise UserError(f"graph adjacency: expected {n} columns, found shape {part.shape}")
            # torch.nonzero, as torch_geometric.utils.dense_to_sparse does: 5x np.nonzero's speed at 11,160 nodes
            r, c = torch.from_numpy(np.ascontiguousarray(part)).nonzero().t().numpy()
            rows.append(r + start)
            cols.append(c)
            weights.append(part[r, c])
        empty = [np.zeros(0, dtype=np.int64)]
        return cls(np.concatenate(rows or empty), np.concatenate(cols or empty),
                   np.concatenate(weights or [np.zeros(0, dtype=np.float32)]), n)

    @property
    def num_edges(self) -> int:
        return int(self.rows.size)

    @property
    def nbytes(self) -> int:
        return self.rows.nbytes + self.cols.nbytes + self.weights.nbytes

    def dense_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of the dense matrix (float32)."""
        out = np.zeros((stop - start, self.num_nodes), dtype=np.float32)
        first, last = np.searchsorted(self.rows, [start, stop])  # row-major: one slice per block of rows
        out[self.rows[first:last] - start, self.cols[first:last]] = self.weights[first:last]
        return out

    def dense(self) -> np.ndarray:
        """The N x N float32 matrix (for small graphs: 498 MB at PeMS's 11,160 sensors)."""
        return self.dense_rows(0, self.num_nodes)

    def edge_index(self) -> tuple[torch.Tensor, torch.Tensor]:
        """PyG's form: a 2 x E int64 edge_index (row 0 = source) and E float32 edge weights."""
        return torch.from_numpy(np.stack([self.rows, self.cols])), torch.from_numpy(self.weights.copy())

    def equals(self, other: "SparseGraph") -> bool:
        return (self.num_nodes == other.num_nodes and np.array_equal(self.rows, other.rows)
                and np.array_equal(self.cols, other.cols) and np.array_equal(self.weights, other.weights))


def as_sparse_graph(graph: "SparseGraph | np.ndarray") -> SparseGraph:
    """A SparseGraph from either form (a dense N x N array is converted)."""
    if isinstance(graph, SparseGraph):
        return graph
    graph = np.asarray(graph)
    if graph.ndim != 2 or graph.shape[0] != graph.shape[1]:
        raise UserError(f"graph adjacency: expected a square N x N matrix, found shape {graph.shape}")
    return SparseGraph.from_dense(graph)
