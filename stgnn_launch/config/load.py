"""Composed Hydra config (DictConfig) <-> validated `Config` dataclasses, and the run's config file."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from omegaconf.nodes import EnumNode

from stgnn_launch.atomic_write import replacing
from stgnn_launch.config.schema import Config, choice_keys, one_of
from stgnn_launch.errors import UserError

from stgnn_launch.rundir import CONFIG as RUN_CONFIG  # the resolved config every rank, eval and resume read back


def to_config(cfg: DictConfig | dict) -> Config:
    """Check keys and types against the schema, then ranges (dataclass __post_init__)."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), cfg)
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        raise user_error(err) from None


def user_error(err: OmegaConfBaseException, default_key: str = "config") -> UserError:
    """OmegaConf's refusal in our one line: the key, then what was expected and found (a choice's allowed
    values, as `choice` in schema.py words them), else the first line of OmegaConf's own message."""
    key = getattr(err, "full_key", None) or default_key
    node = getattr(err, "child_node", None)
    if isinstance(node, EnumNode):
        return UserError(f"{key}: expected {one_of(node.enum_type)}, found {getattr(err, 'value', None)!r}")
    return UserError(f"{key}: {str(getattr(err, 'msg', None) or err).splitlines()[0]}")


def check_choices(overrides: Iterable[str]) -> None:
    """Command-line values of the choice keys (batching.mode=...), refused in one line before Hydra composes:
    Hydra would report OmegaConf's refusal over several lines and exit 1. A sweep's values (a,b) each."""
    keys = choice_keys()
    for arg in overrides:
        key, sep, value = arg.lstrip("+~").partition("=")
        kind = keys.get(key.strip())
        for found in (value.split(",") if sep and kind else ()):
            if found.strip() not in tuple(kind):
                raise UserError(f"{key.strip()}: expected {one_of(kind)}, found {found.strip()!r}")


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
