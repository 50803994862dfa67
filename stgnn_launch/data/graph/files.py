"""Graph files: DCRNN pickles `[sensor_ids, sensor_id_to_ind, adj_mx]` (Python 2 ones too), dense CSV and
NPY matrices, and sensor id lists; read as an N x N float32 adjacency plus the ids the file carries."""

from __future__ import annotations

import csv
import os
import pickle
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from stgnn_launch.atomic_write import replacing
from stgnn_launch.config.paths import existing_file
from stgnn_launch.data.graph.pickle_safe import safe_load_pickle
from stgnn_launch.errors import UserError


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
        text = existing_file(path).read_text()
        ids = [token.strip() for token in text.replace("\n", ",").split(",") if token.strip()]
    elif suffix == ".csv":
        ids = _csv_id_column(path)
    else:
        raise UserError(f"sensor id file {path}: expected a .txt, .csv or .pkl file, found suffix {path.suffix!r}")
    if not ids:
        raise UserError(f"sensor id file {path}: expected at least one id, found none")
    check_unique_ids(path, ids)
    return ids


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
        check_unique_ids(path, ids)
    with replacing(path) as tmp, open(tmp, "wb") as file:
        if suffix == ".npy":
            np.save(file, adjacency)
        else:
            pickle.dump([ids, {s: i for i, s in enumerate(ids)}, adjacency], file, protocol=4)
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
    check_unique_ids(path, ids)
    mapping = {_decode(k): v for k, v in id_to_ind.items()}
    if mapping != {s: i for i, s in enumerate(ids)}:
        raise UserError(
            f"{path}: expected sensor_id_to_ind to give each id its position in sensor_ids, found another mapping"
        )
    return ids, adjacency


def _decode(value: object) -> str:
    return value.decode("latin1") if isinstance(value, bytes) else str(value)


def _load_dense_csv(path: Path) -> tuple[list[str] | None, np.ndarray]:
    with open(existing_file(path), newline="") as file:
        first = next(csv.reader(file), [])
    header = [cell.strip() for cell in first]
    numeric = all(is_number(cell) for cell in header)
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


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(existing_file(path), allow_pickle=False)
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
    check_unique_ids(path, wanted)
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


def check_unique_ids(path: Path, ids: Sequence[str]) -> None:
    if len(set(ids)) != len(ids):
        repeated = [s for s, count in Counter(ids).items() if count > 1]
        raise UserError(f"{path}: expected distinct sensor ids, found {len(repeated)} repeated (e.g. {repeated[:3]})")


def _csv_id_column(path: Path) -> list[str]:
    with open(existing_file(path), newline="") as file:
        rows = [[cell.strip() for cell in row] for row in csv.reader(file) if any(cell.strip() for cell in row)]
    if not rows:
        return []
    header = [cell.lower() for cell in rows[0]]
    if "sensor_id" in header:
        column = header.index("sensor_id")
        return [row[column] for row in rows[1:]]
    # No sensor_id column: the first row is a header if a column holds a name above numbers.
    second = rows[1] if len(rows) > 1 else []
    has_header = any(not is_number(a) and is_number(b) for a, b in zip(rows[0], second))
    return [row[0] for row in rows[1 if has_header else 0:]]
