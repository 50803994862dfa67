"""Plain-dict summaries of a series and of a graph, and one way to print them."""

from __future__ import annotations

import numpy as np
import torch

from stgnn_launch.data.graph import SparseGraph, as_sparse_graph
from stgnn_launch.data.series import Series

_COUNT_ROWS = 65536  # steps per block when counting missing readings: the boolean masks stay small
_STEP_UNITS = (("D", "d"), ("h", "h"), ("m", "min"), ("s", "s"), ("ms", "ms"), ("us", "us"), ("ns", "ns"))


def describe_series(series: Series) -> dict[str, object]:
    """Shape, time range and step, and the share of missing readings (value 0 or NaN)."""
    values = series.values
    missing = 0
    for a in range(0, series.num_steps, _COUNT_ROWS):
        block = values[a:a + _COUNT_ROWS]
        missing += int(((block == 0) | torch.isnan(block)).sum())
    return {
        "shape": tuple(values.shape),
        "start": np.datetime_as_string(series.timestamps[0], unit="s"),
        "end": np.datetime_as_string(series.timestamps[-1], unit="s"),
        "step": format_step(series.step) if series.num_steps > 1 else None,
        "missing_share": missing / max(1, values.nelement()),
    }


def describe_graph(graph: SparseGraph | np.ndarray) -> dict[str, object]:
    """Node count, edges (nonzero weights off the diagonal, and with them) and symmetry."""
    graph = as_sparse_graph(graph)
    n = graph.num_nodes
    forward = np.argsort(graph.rows * n + graph.cols, kind="stable")
    mirror = np.argsort(graph.cols * n + graph.rows, kind="stable")
    symmetric = bool(np.array_equal(graph.rows[forward], graph.cols[mirror])
                     and np.array_equal(graph.cols[forward], graph.rows[mirror])
                     # float weights from a kernel may differ from their mirror in the last bit
                     and np.allclose(graph.weights[forward], graph.weights[mirror], rtol=1e-6, atol=0))
    return {
        "nodes": n,
        "edges": graph.num_edges - int((graph.rows == graph.cols).sum()),
        "edges_with_self_loops": graph.num_edges,
        "symmetric": symmetric,
    }


def format_step(step: np.timedelta64) -> str:
    """A step in the largest whole unit, written the way `parse_freq` reads it ('5min', '1h')."""
    for unit, label in _STEP_UNITS:
        whole = step.astype(f"timedelta64[{unit}]")
        if whole == step:
            return f"{whole.astype(np.int64)}{label}"
    return str(step)


def format_summary(summary: dict[str, object]) -> str:
    """One aligned 'name: value' line per entry."""
    width = max((len(name) for name in summary), default=0) + 1
    lines = []
    for name, value in summary.items():
        if isinstance(value, tuple):
            text = " x ".join(str(v) for v in value)
        elif isinstance(value, float) and name.endswith("share"):
            text = f"{value:.4f} ({value:.2%})"
        elif isinstance(value, float):
            text = f"{value:.6g}"
        elif value is None:
            text = "n/a"
        else:
            text = str(value)
        lines.append(f"{(name.replace('_', ' ') + ':'):<{width + 1}} {text}")
    return "\n".join(lines)
