"""Sensor graphs: DCRNN pickles (loaded without running code), dense CSV/NPY matrices, distance lists.

Files hold a graph as an N x N float32 weighted adjacency plus, when the file carries them, the sensor
ids that name its rows and columns. Once read, a graph is kept as a `SparseGraph` (an edge list): road
graphs are sparse, and a dense 11,160 x 11,160 PeMS adjacency would be 498 MB beside the series in every
process that holds one. DCRNN's road graphs come as Python 2 pickles `[sensor_ids, sensor_id_to_ind,
adj_mx]`; pickles can run arbitrary code, so they are read through an unpickler that admits only the
few numpy globals an array needs.
"""

from __future__ import annotations

import csv
import importlib
import io
import os
import pickle
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stgnn_launch.atomic_write import replacing
from stgnn_launch.errors import UserError, expect


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


_REFUSED = "only numpy arrays, lists, dicts and strings are allowed in a graph pickle"


def _numpy_core(name: str) -> object:
    # numpy 2 moved numpy.core to numpy._core; old pickles name the former, new ones the latter.
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"numpy has no multiarray.{name}")


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    # Python 3 writes bytes into protocol-2 pickles as _codecs.encode(text, "latin1"); admit that use only.
    if encoding.replace("-", "").lower() != "latin1" or not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _allowed_globals() -> dict[tuple[str, str], object]:
    reconstruct, scalar = _numpy_core("_reconstruct"), _numpy_core("scalar")
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_bytes,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = reconstruct
        allowed[(module, "scalar")] = scalar
    return allowed


class _GraphUnpickler(pickle.Unpickler):
    """Resolves only the globals of a numpy array; lists, dicts and strings need none."""

    def __init__(self, file: io.BufferedIOBase, path: Path) -> None:
        super().__init__(file, encoding="latin1")
        self._path = path
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> object:
        found = self._allowed.get((module, name))
        if found is None:
            raise UserError(f"{self._path}: refused to load pickle global {module}.{name}: {_REFUSED}")
        return found


def safe_load_pickle(path: str | os.PathLike) -> object:
    """Unpickle a graph file (Python 2 pickles too) without ever calling anything but numpy's array builders."""
    path = _existing(path)
    with open(path, "rb") as file:
        try:
            return _GraphUnpickler(file, path).load()
        except UserError:
            raise
        except Exception as err:  # any malformed byte stream: report it, never a traceback
            raise UserError(f"{path}: expected a readable graph pickle, found a broken one ({err})") from err


def load_graph(path: str | os.PathLike, sensor_ids: Sequence[str] | None = None) -> tuple[np.ndarray, list[str] | None]:
    """The N x N float32 adjacency of a .pkl (DCRNN), .csv (dense) or .npy file and the ids it carries.

    With `sensor_ids`, a graph that carries ids is reordered to that order (same set required); one that
    carries none must at least have as many rows as there are ids.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".pkl":
        ids, adjacency = _load_dcrnn_pickle(path)
    elif suffix == ".csv":
        ids, adjacency = _load_dense_csv(path)
    elif suffix == ".npy":
        ids, adjacency = None, _load_npy(path)
    else:
        raise UserError(f"graph file {path}: expected a .pkl, .csv or .npy file, found suffix {path.suffix!r}")
    adjacency = _check_matrix(path, adjacency)
    if sensor_ids is None:
        return adjacency, ids
    wanted = [str(s) for s in sensor_ids]
    if ids is None:
        if len(wanted) != adjacency.shape[0]:
            raise UserError(
                f"graph {path}: expected {len(wanted)} rows (one per sensor), found {adjacency.shape[0]}"
            )
        return adjacency, None
    return _reorder(path, adjacency, ids, wanted), wanted


def read_sensor_ids(path: str | os.PathLike) -> list[str]:
    """Sensor ids from a .txt (comma/newline separated), a .csv (column sensor_id, else the first) or a DCRNN .pkl."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".pkl":
        ids = _load_dcrnn_pickle(path)[0]
    elif suffix == ".txt":
        text = _existing(path).read_text()
        ids = [token.strip() for token in text.replace("\n", ",").split(",") if token.strip()]
    elif suffix == ".csv":
        ids = _csv_id_column(path)
    else:
        raise UserError(f"sensor id file {path}: expected a .txt, .csv or .pkl file, found suffix {path.suffix!r}")
    if not ids:
        raise UserError(f"sensor id file {path}: expected at least one id, found none")
    _check_unique(path, ids)
    return ids


def gaussian_kernel_adjacency(
    distances_path: str | os.PathLike, sensor_ids: Sequence[str], threshold: float = 0.1
) -> np.ndarray:
    """DCRNN's graph from road distances: rows `from,to,distance` (header optional) -> N x N float32 weights.

    Only rows whose two ids are in `sensor_ids` count; the result's order is that of `sensor_ids`.
    """
    path = _existing(distances_path)
    expect(0 <= threshold < 1, "graph threshold", "a weight in [0, 1)", threshold)
    ids = [str(s) for s in sensor_ids]
    _check_unique(path, ids)
    rows = _read_distance_rows(path)
    index = {sensor: i for i, sensor in enumerate(ids)}
    # Map each distinct id once, then every row through the inverse index: no per-row Python work.
    names, inverse = np.unique(rows[:, :2], return_inverse=True)
    positions = np.array([index.get(name, -1) for name in names], dtype=np.int64)[inverse.reshape(-1, 2)]
    keep = (positions >= 0).all(axis=1)
    try:
        values = rows[keep, 2].astype(np.float32)
    except ValueError as err:
        raise UserError(f"distances {path}: expected numbers in the third column, found {err}") from err
    distances = np.full((len(ids), len(ids)), np.inf, dtype=np.float32)
    distances[positions[keep, 0], positions[keep, 1]] = values
    return gaussian_kernel(distances, threshold, what=f"distances {path}")


def gaussian_kernel(distances: np.ndarray, threshold: float = 0.1, what: str = "distances") -> np.ndarray:
    """w = exp(-(d / sigma)^2) with sigma the std of the finite distances (inf = no road); w < threshold -> 0."""
    finite = distances[np.isfinite(distances)]
    if finite.size == 0 or finite.std() == 0:
        raise UserError(f"{what}: expected distances between the listed sensors, found {finite.size} usable ones")
    weights = np.exp(-np.square(distances / finite.std()))
    weights[weights < threshold] = 0
    return weights.astype(np.float32)


def save_graph(path: str | os.PathLike, adjacency: np.ndarray, sensor_ids: Sequence[str] | None = None) -> Path:
    """Write .npy (the matrix) or .pkl (DCRNN's [ids, id_to_ind, adj]) atomically: temp file, then rename."""
    path = Path(path)
    adjacency = _check_matrix(path, np.asarray(adjacency, dtype=np.float32))
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".pkl"):
        raise UserError(f"graph file {path}: expected a .npy or .pkl name to write, found suffix {path.suffix!r}")
    if suffix == ".pkl":
        if sensor_ids is None or len(sensor_ids) != adjacency.shape[0]:
            found = "none" if sensor_ids is None else len(sensor_ids)
            raise UserError(f"graph {path}: expected {adjacency.shape[0]} sensor ids to write a .pkl, found {found}")
        ids = [str(s) for s in sensor_ids]
        _check_unique(path, ids)
    with replacing(path) as tmp, open(tmp, "wb") as file:
        if suffix == ".npy":
            np.save(file, adjacency)
        else:
            pickle.dump([ids, {s: i for i, s in enumerate(ids)}, adjacency], file, protocol=4)
    return path


def _existing(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: expected an existing file, found none")
    return path


def _load_dcrnn_pickle(path: Path) -> tuple[list[str], np.ndarray]:
    data = safe_load_pickle(path)
    layout = "a DCRNN graph pickle [sensor_ids, sensor_id_to_ind, adj_mx]"
    if not isinstance(data, (list, tuple)) or len(data) != 3:
        found = f"a {type(data).__name__}" + (f" of {len(data)} items" if isinstance(data, (list, tuple)) else "")
        raise UserError(f"{path}: expected {layout}, found {found}")
    ids, id_to_ind, adjacency = data
    if not isinstance(ids, (list, tuple, np.ndarray)) or not isinstance(id_to_ind, dict):
        raise UserError(f"{path}: expected {layout}, found [{type(ids).__name__}, {type(id_to_ind).__name__}, ...]")
    if not isinstance(adjacency, np.ndarray):
        raise UserError(f"{path}: expected {layout}, found a {type(adjacency).__name__} as adj_mx")
    ids = [_decode(s) for s in ids]
    _check_unique(path, ids)
    mapping = {_decode(k): v for k, v in id_to_ind.items()}
    if mapping != {s: i for i, s in enumerate(ids)}:
        raise UserError(
            f"{path}: expected sensor_id_to_ind to give each id its position in sensor_ids, found another mapping"
        )
    return ids, adjacency


def _decode(value: object) -> str:
    return value.decode("latin1") if isinstance(value, bytes) else str(value)


def _load_dense_csv(path: Path) -> tuple[list[str] | None, np.ndarray]:
    with open(_existing(path), newline="") as file:
        first = next(csv.reader(file), [])
    header = [cell.strip() for cell in first]
    numeric = all(_is_number(cell) for cell in header)
    try:
        matrix = np.loadtxt(path, delimiter=",", dtype=np.float32, skiprows=0 if numeric else 1, ndmin=2)
    except ValueError as err:
        raise UserError(f"graph {path}: expected a dense matrix of numbers, found {err}") from err
    if numeric and matrix.shape[0] == matrix.shape[1] + 1:
        # A header of numeric ids (e.g. 773869,...) parses as numbers: one row more than columns gives it away.
        return header, matrix[1:]
    if numeric:
        return None, matrix
    if header and header[0] == "" and matrix.shape[1] == len(header):
        # pandas' to_csv with its index: an empty corner cell and the ids again down the first column.
        return header[1:], matrix[:, 1:]
    return header, matrix


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(_existing(path), allow_pickle=False)
    except ValueError as err:
        raise UserError(f"graph {path}: expected a numeric .npy array, found {err}") from err


def _check_matrix(path: Path, adjacency: np.ndarray) -> np.ndarray:
    if adjacency.ndim != 2 or adjacency.shape[0] != adjacency.shape[1]:
        raise UserError(f"graph {path}: expected a square N x N adjacency, found shape {adjacency.shape}")
    try:
        adjacency = adjacency.astype(np.float32)
    except (TypeError, ValueError) as err:
        raise UserError(f"graph {path}: expected numeric weights, found dtype {adjacency.dtype}") from err
    bad = int((~np.isfinite(adjacency)).sum())
    if bad:
        raise UserError(f"graph {path}: expected finite weights, found {bad} NaN or infinite entries")
    return adjacency


def _reorder(path: Path, adjacency: np.ndarray, ids: list[str], wanted: list[str]) -> np.ndarray:
    if ids == wanted:
        return adjacency
    _check_unique(path, wanted)
    have, want = set(ids), set(wanted)
    missing = [s for s in wanted if s not in have]
    extra = [s for s in ids if s not in want]
    if missing or extra:
        raise UserError(
            f"graph {path}: expected the {len(wanted)} sensor ids of the series, found {len(missing)} of them "
            f"missing from the graph (e.g. {missing[:3]}) and {len(extra)} graph ids not in the series "
            f"(e.g. {extra[:3]})"
        )
    position = {s: i for i, s in enumerate(ids)}
    order = np.array([position[s] for s in wanted])
    return adjacency[np.ix_(order, order)]


def _check_unique(path: Path, ids: Sequence[str]) -> None:
    if len(set(ids)) != len(ids):
        repeated = [s for s, count in Counter(ids).items() if count > 1]
        raise UserError(f"{path}: expected distinct sensor ids, found {len(repeated)} repeated (e.g. {repeated[:3]})")


def _csv_id_column(path: Path) -> list[str]:
    with open(_existing(path), newline="") as file:
        rows = [[cell.strip() for cell in row] for row in csv.reader(file) if any(cell.strip() for cell in row)]
    if not rows:
        return []
    header = [cell.lower() for cell in rows[0]]
    if "sensor_id" in header:
        column = header.index("sensor_id")
        return [row[column] for row in rows[1:]]
    # No sensor_id column: the first row is a header if a column holds a name above numbers.
    second = rows[1] if len(rows) > 1 else []
    has_header = any(not _is_number(a) and _is_number(b) for a, b in zip(rows[0], second))
    return [row[0] for row in rows[1 if has_header else 0:]]


def _read_distance_rows(path: Path) -> np.ndarray:
    with open(path, newline="") as file:
        first = next(csv.reader(file), [])
    skip = 1 if len(first) >= 3 and not _is_number(first[2].strip()) else 0
    try:
        rows = np.loadtxt(path, delimiter=",", dtype=str, skiprows=skip, ndmin=2, usecols=(0, 1, 2))
    except ValueError as err:
        raise UserError(f"distances {path}: expected rows from,to,distance, found {err}") from err
    return np.char.strip(rows)
