"""Dataset config -> Series with its graph attached and checked against the series' sensor order."""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from stgnn_launch.config.schema import DatasetConfig
from stgnn_launch.data.series import Series
from stgnn_launch.errors import UserError


def cache_root(cfg: DatasetConfig) -> Path:
    if cfg.cache_dir:
        return Path(cfg.cache_dir).expanduser()
    return Path(os.environ.get("STGNN_CACHE", Path.home() / ".cache" / "stgnn-launch"))


def series_path(cfg: DatasetConfig) -> Path:
    """The file the series is read from (generating the synthetic set on first use)."""
    if cfg.name == "synthetic" and cfg.path is None:
        from stgnn_launch.data.synthetic import ensure_synthetic

        return ensure_synthetic(cache_root(cfg) / "synthetic", cfg.num_nodes, cfg.num_steps, cfg.seed)
    return Path(cfg.path).expanduser()  # type: ignore[arg-type]


def _read_options(cfg: DatasetConfig) -> dict:
    return {"key": cfg.key, "start": cfg.start, "freq": cfg.freq, "axis_order": cfg.axis_order,
            "cache_dir": cache_root(cfg) / "converted"}


def _is_pgt_json(cfg: DatasetConfig) -> bool:
    """PyTorch Geometric Temporal's JSON layouts (chickenpox, Montevideo bus): series and graph in one file."""
    return cfg.path is not None and Path(cfg.path).suffix.lower() == ".json"


@contextmanager
def _axis_order_hint():
    """An array whose dimensions do not match dataset.axis_order: say which key to set."""
    try:
        yield
    except UserError as err:
        if "-d array for axis order" not in str(err):
            raise
        raise UserError(f"{err}; set dataset.axis_order (TN or NT for a 2-d array; TNF, NTF, NFT or TFN for "
                        "a 3-d one: T time steps, N sensors, F features)") from None


def dataset_shape(cfg: DatasetConfig) -> tuple[int, int, int]:
    """T, N, F of the configured series without reading its values (the planner's input)."""
    if cfg.name == "synthetic" and cfg.path is None:
        return cfg.num_steps, cfg.num_nodes, 1
    if _is_pgt_json(cfg):
        return tuple(load_dataset(cfg).values.shape)  # type: ignore[return-value]
    from stgnn_launch.data.readers import series_shape

    with _axis_order_hint():
        return series_shape(series_path(cfg), **_read_options(cfg))


def dataset_num_steps(cfg: DatasetConfig) -> int:
    """T of the configured series, without reading its values."""
    from stgnn_launch.data.readers import series_num_steps

    if _is_pgt_json(cfg):
        return load_dataset(cfg).num_steps
    with _axis_order_hint():
        return series_num_steps(series_path(cfg), **_read_options(cfg))


def load_dataset(cfg: DatasetConfig, time_range: tuple[int, int] | None = None, alloc=None) -> Series:
    """The configured series (or only steps [first, stop) of it) with its graph attached; `alloc`
    (shape -> float32 array) is where HDF5 readers put the values (a shared-memory segment)."""
    from stgnn_launch.data.readers import load_series

    if _is_pgt_json(cfg):  # small files published with their graph: read whole, then cut the range
        from stgnn_launch.data.readers.pgt_json import read_pgt_json

        series = read_pgt_json(series_path(cfg))
        if time_range is not None:
            first, stop = time_range
            series = replace(series, values=series.values[first:stop], timestamps=series.timestamps[first:stop])
    else:
        with _axis_order_hint():
            series = load_series(series_path(cfg), time_range=time_range, alloc=alloc, **_read_options(cfg))
    if cfg.adj_path:
        from stgnn_launch.data.graph import load_graph

        adjacency, _ = load_graph(Path(cfg.adj_path).expanduser(), sensor_ids=series.sensor_ids)
        series = replace(series, graph=adjacency)  # kept as an edge list; Series checks its size
    if series.graph is None:
        raise UserError(f"dataset.adj_path: expected a graph file for dataset {cfg.name!r} "
                        f"(the series file carries none), found {cfg.adj_path!r}")
    return series
