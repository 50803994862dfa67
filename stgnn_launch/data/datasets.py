"""Dataset config -> Series with its graph attached and checked against the series' sensor order."""

from __future__ import annotations

import os
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


def dataset_num_steps(cfg: DatasetConfig) -> int:
    """T of the configured series, without reading its values."""
    from stgnn_launch.data.readers import series_num_steps

    return series_num_steps(series_path(cfg), **_read_options(cfg))


def load_dataset(cfg: DatasetConfig, time_range: tuple[int, int] | None = None) -> Series:
    """The configured series (or only steps [first, stop) of it) with its graph attached."""
    from stgnn_launch.data.readers import load_series

    series = load_series(series_path(cfg), time_range=time_range, **_read_options(cfg))
    if cfg.adj_path:
        from stgnn_launch.data.graph import load_graph

        adjacency, _ = load_graph(Path(cfg.adj_path).expanduser(), sensor_ids=series.sensor_ids)
        series = replace(series, adjacency=adjacency)  # Series checks the graph's size against its sensors
    if series.adjacency is None:
        raise UserError(f"dataset.adj_path: expected a graph file for dataset {cfg.name!r} "
                        f"(the series file carries none), found {cfg.adj_path!r}")
    return series
