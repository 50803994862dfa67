"""The `models=[...]` list -> candidates: a built-in model, the user's own class, or either with its own
hyperparameters and presets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stgnn_launch.errors import UserError

_KEYS = {"name", "label", "params", "overrides"}


@dataclass(frozen=True)
class Candidate:
    label: str  # how tables, profile.json and the chart name it
    model_group: str  # conf/model/<model_group>.yaml: a built-in model, or `custom` for an import path
    target: str | None = None  # model=custom: the user's class (module:Class, module.Class, file.py:Class)
    params: dict = field(default_factory=dict)  # merged into model.params
    overrides: tuple[str, ...] = ()  # extra training overrides for this candidate (e.g. experiment=...)


def is_import_path(name: str) -> bool:
    return ":" in name or name.endswith(".py") or "." in name


def candidate(entry: Any, position: int) -> Candidate:
    where = f"models[{position}]"
    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, dict):
        raise UserError(f"{where}: expected a model name, an import path or {{name, label, params, overrides}}, "
                        f"found {entry!r}")
    unknown = sorted(set(entry) - _KEYS)
    name = entry.get("name")
    if unknown or not isinstance(name, str) or not name.strip():
        raise UserError(f"{where}: expected keys name (required), label, params, overrides, found {dict(entry)!r}")
    params, overrides = entry.get("params") or {}, entry.get("overrides") or []
    if not isinstance(params, dict) or not isinstance(overrides, list):
        raise UserError(f"{where}: expected params as a mapping and overrides as a list, found {dict(entry)!r}")
    custom = is_import_path(name)
    default_label = name.replace(".py", "").replace(":", ".").rsplit(".", 1)[-1] if custom else name
    return Candidate(label=str(entry.get("label") or default_label), model_group="custom" if custom else name,
                     target=name if custom else None, params=dict(params),
                     overrides=tuple(str(o) for o in overrides))


def parse_candidates(models: list[Any]) -> list[Candidate]:
    if not models:
        raise UserError("models: expected at least one candidate, found an empty list")
    found = [candidate(entry, i) for i, entry in enumerate(models)]
    labels = [c.label for c in found]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise UserError(f"models: expected distinct labels (give each a label: ...), found {repeated} repeated")
    return found
