"""Composed Hydra config (DictConfig) <-> validated `Config` dataclasses, and the run's config file."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from stgnn_launch.atomic_write import replacing
from stgnn_launch.config.schema import Config
from stgnn_launch.errors import UserError

from stgnn_launch.rundir import CONFIG as RUN_CONFIG  # the resolved config every rank, eval and resume read back


def to_config(cfg: DictConfig | dict) -> Config:
    """Check keys and types against the schema, then ranges (dataclass __post_init__)."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), cfg)
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "config"
        message = str(getattr(err, "msg", None) or err).splitlines()[0]
        raise UserError(f"{key}: {message}") from None


def save_run_config(cfg: Config, run_dir: Path) -> Path:
    path = run_dir / RUN_CONFIG
    with replacing(path) as tmp:
        tmp.write_text(OmegaConf.to_yaml(OmegaConf.create(asdict(cfg))))
    return path


def with_overrides(cfg: Config, overrides: list[str]) -> Config:
    """cfg with `key=value` overrides (OmegaConf dot-list), checked against the schema as a composed one."""
    if not overrides:
        return cfg
    try:
        dotlist = OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as err:
        raise UserError(f"overrides {overrides}: {str(getattr(err, 'msg', None) or err).splitlines()[0]}") from None
    return to_config(OmegaConf.merge(OmegaConf.create(asdict(cfg)), dotlist))


def as_written(saved: DictConfig) -> DictConfig:
    """A saved config.yaml read as the run that wrote it trained: one from before model.base existed trained
    the bare network (the schema's default now puts it on a fitted baseline)."""
    if "model" in saved and "base" not in saved.model:
        saved.model.base = "none"
    return saved


def load_run_config(run_dir: Path) -> Config:
    path = run_dir / RUN_CONFIG
    if not path.is_file():
        raise UserError(f"run directory {run_dir}: expected {RUN_CONFIG} written by stgnn-train, found none")
    return to_config(as_written(OmegaConf.load(path)))
