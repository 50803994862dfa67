"""Where a relative data path in a config points, and the one conf/ directory every entry point composes.

The dataset yamls shipped in conf/ name the repository's data as `../shared/data/...`, relative to the
checkout; a user's `dataset.path=my.h5` is relative to where they run. A relative path is therefore looked
up, in this order, under the current directory, under $STGNN_DATA (the path and its shorter tails, so that
STGNN_DATA may be the data root or the dataset's own folder), and under the repository checkout the
package runs from (a source tree; nothing for an installed wheel). The first existing file wins and the
config holds it as an absolute path, so every rank and Slurm node reads the same file.
"""

from __future__ import annotations

import os
from pathlib import Path

from stgnn_launch.errors import UserError

PACKAGE_DIR = Path(__file__).resolve().parents[1]
CONF_DIR = PACKAGE_DIR / "conf"  # packaged with the code (pyproject's package-data), so a wheel has it too
CHECKOUT_DIR = PACKAGE_DIR.parent  # the repository root when running from a source checkout
DATA_ENV = "STGNN_DATA"


def candidates(path: str) -> list[Path]:
    """Where a relative `path` may be, first to last (see the module docstring)."""
    relative = Path(path).expanduser()
    if relative.is_absolute():
        return [relative]
    places = [Path.cwd() / relative]
    data_root = os.environ.get(DATA_ENV)
    if data_root:
        parts = [p for p in relative.parts if p not in ("..", ".")]
        places += [Path(data_root).expanduser() / Path(*parts[i:]) for i in range(len(parts))]
    if (CHECKOUT_DIR / "pyproject.toml").is_file():
        places.append(CHECKOUT_DIR / relative)
    return places


def resolve_data_path(path: str | None) -> str | None:
    """The first existing place of `path` as an absolute path; `path` unchanged where none exists (the
    reader then says which file is missing)."""
    if path is None:
        return None
    for place in candidates(path):
        if place.exists():
            return str(place.resolve())
    return path


def existing_file(path: str | os.PathLike) -> Path:
    """`path` as a Path, or the one-line refusal of a file that is not there (every reader's first check)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: expected an existing file, found nothing there")
    return path
