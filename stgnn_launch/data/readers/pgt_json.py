"""The two JSON layouts PyTorch Geometric Temporal publishes its small real datasets in.

* Chickenpox (Hungary, weekly): `{"edges": [[i, j], ...], "node_ids": {county: index}, "FX": T x N}`.
  The values are already z-scored per county by the publisher, so negatives are real readings.
* Montevideo bus (hourly inflow): a networkx node-link graph `{"directed", "multigraph", "graph",
  "nodes": [{"id", "bus_stop", "lon", "lat", "in_degree", "y": T counts, "X": {"y": ...}}],
  "links": [{"source", "target", "weight": road distance in m}]}`. A count of 0 is a real reading.

Neither file carries timestamps; the readers attach the publishers' calendars (below).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stgnn_launch.data.graph import gaussian_kernel
from stgnn_launch.data.series import Series, regular_timestamps
from stgnn_launch.errors import UserError

# The Hungarian chickenpox series (Rozemberczki et al., UCI "Hungarian Chickenpox Cases") runs weekly
# from Monday 2005-01-03; the JSON's first row is taken as that week.
CHICKENPOX_START, CHICKENPOX_FREQ = "2005-01-03T00:00", "7d"
# The Montevideo bus inflow covers October 2020 hour by hour (31 x 24 = 744 steps).
MONTEVIDEO_START, MONTEVIDEO_FREQ = "2020-10-01T00:00", "1h"

CHICKENPOX_LAYOUT = 'PyTorch Geometric Temporal chickenpox JSON {"edges", "node_ids", "FX"}'
MONTEVIDEO_LAYOUT = 'networkx node-link JSON {"nodes": [{"id", "y", ...}], "links": [{"source", "target", "weight"}]}'


def read_pgt_json(path: str | os.PathLike) -> Series:
    """Either layout, told apart by its top-level keys."""
    path, data = _load(path)
    if isinstance(data, dict) and {"edges", "node_ids", "FX"} <= data.keys():
        return _chickenpox(path, data)
    if isinstance(data, dict) and {"nodes", "links"} <= data.keys():
        return _montevideo_bus(path, data)
    raise UserError(f"{path}: expected a {CHICKENPOX_LAYOUT} or a {MONTEVIDEO_LAYOUT}, found {_describe(data)}")


def read_chickenpox(path: str | os.PathLike) -> Series:
    """Weekly z-scored case counts, T x N x 1, graph weights 1 on the published (symmetric) edges."""
    path, data = _load(path)
    return _chickenpox(path, data)


def read_montevideo_bus(path: str | os.PathLike) -> Series:
    """Hourly inflow counts, T x N x 1, graph from the directed links' road distances (Gaussian kernel)."""
    path, data = _load(path)
    return _montevideo_bus(path, data)


def _load(path: str | os.PathLike) -> tuple[Path, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: expected an existing JSON file, found none")
    try:
        with open(path) as file:
            return path, json.load(file)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: expected JSON, found unparsable text ({err})") from err


def _describe(data: Any) -> str:
    if isinstance(data, dict):
        return f"an object with keys {sorted(data)[:8]}"
    return f"a JSON {type(data).__name__}"


def _chickenpox(path: Path, data: Any) -> Series:
    if not isinstance(data, dict) or not {"edges", "node_ids", "FX"} <= data.keys():
        raise UserError(f"{path}: expected a {CHICKENPOX_LAYOUT}, found {_describe(data)}")
    node_ids = data["node_ids"]
    if not isinstance(node_ids, dict) or sorted(node_ids.values()) != list(range(len(node_ids))):
        raise UserError(f"{path}: expected node_ids to map each name to a distinct index 0..N-1, "
                        f"found {str(node_ids)[:80]}")
    n = len(node_ids)
    values = _matrix(path, data["FX"], "FX", columns=n)
    edges = _matrix(path, data["edges"], "edges", columns=2)
    if edges.size and (edges.min() < 0 or edges.max() >= n or not np.all(edges == np.round(edges))):
        raise UserError(f"{path}: expected edges [i, j] with integer node indices in 0..{n - 1}, "
                        f"found indices {edges.min():g}..{edges.max():g}")
    adjacency = np.zeros((n, n), dtype=np.float32)
    adjacency[edges[:, 0].astype(int), edges[:, 1].astype(int)] = 1.0  # the publisher's graph is unweighted
    names = sorted(node_ids, key=node_ids.get)
    return Series(torch.from_numpy(values[:, :, None]), regular_timestamps(CHICKENPOX_START, CHICKENPOX_FREQ,
                  values.shape[0]), names, adjacency, feature_names=["cases_zscore"])


def _montevideo_bus(path: Path, data: Any) -> Series:
    if not isinstance(data, dict) or not isinstance(data.get("nodes"), list) or not isinstance(data.get("links"), list):
        raise UserError(f"{path}: expected a {MONTEVIDEO_LAYOUT}, found {_describe(data)}")
    nodes, links = data["nodes"], data["links"]
    bad = next((i for i, node in enumerate(nodes) if not isinstance(node, dict) or not {"id", "y"} <= node.keys()), None)
    if bad is not None or not nodes:
        found = "no nodes" if not nodes else f"node {bad} = {str(nodes[bad])[:80]}"
        raise UserError(f'{path}: expected nodes as objects with "id" and "y" (hourly counts), found {found}')
    ids = [str(node["id"]) for node in nodes]
    if len(set(ids)) != len(ids):
        raise UserError(f"{path}: expected distinct node ids, found {len(ids) - len(set(ids))} repeated")
    values = _matrix(path, [node["y"] for node in nodes], 'nodes[*]["y"]').T  # N x T -> T x N
    index = {node_id: i for i, node_id in enumerate(ids)}
    distances = np.full((len(ids), len(ids)), np.inf, dtype=np.float32)
    for k, link in enumerate(links):
        if not isinstance(link, dict) or not {"source", "target", "weight"} <= link.keys():
            raise UserError(f'{path}: expected links as objects with "source", "target", "weight", '
                            f"found link {k} = {str(link)[:80]}")
        source, target = index.get(str(link["source"])), index.get(str(link["target"]))
        if source is None or target is None:
            raise UserError(f"{path}: expected link {k} to join two listed node ids, "
                            f"found {link['source']!r} -> {link['target']!r}")
        distances[source, target] = float(link["weight"])
    # Road distances (m) -> weights with DCRNN's Gaussian kernel, w = exp(-(d / std(d))^2) (data/graph/kernel.py),
    # so closer stops weigh more; direction kept: row = source stop, column = target. DCRNN's 0.1 cut-off
    # is not applied: it sparsifies all-pairs distances, whereas these 690 links already are the sparse
    # road graph (std 174 m; the cut would drop 369 of them, median weight 0.08, and cut the lines apart).
    adjacency = gaussian_kernel(distances, threshold=0.0, what=f"{path} links")
    return Series(torch.from_numpy(np.ascontiguousarray(values[:, :, None])),
                  regular_timestamps(MONTEVIDEO_START, MONTEVIDEO_FREQ, values.shape[0]), ids, adjacency,
                  feature_names=["inflow"])


def _matrix(path: Path, rows: Any, key: str, columns: int | None = None) -> np.ndarray:
    """A rectangular list of lists of numbers -> float32 2-D array, or one UserError naming `key`."""
    if not isinstance(rows, list) or not rows or not all(isinstance(row, list) for row in rows):
        raise UserError(f"{path}: expected {key} as a non-empty list of lists of numbers, found {str(rows)[:80]}")
    lengths = {len(row) for row in rows}
    if len(lengths) != 1 or (columns is not None and lengths != {columns}):
        want = f"{columns} per row" if columns is not None else "equally long rows"
        raise UserError(f"{path}: expected {key} with {want}, found row lengths {sorted(lengths)[:5]}")
    try:
        matrix = np.asarray(rows, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise UserError(f"{path}: expected numbers in {key}, found {err}") from err
    if not np.isfinite(matrix).all():
        raise UserError(f"{path}: expected finite numbers in {key}, found {int((~np.isfinite(matrix)).sum())} others")
    return matrix
