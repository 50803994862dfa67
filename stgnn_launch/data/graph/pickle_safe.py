"""DCRNN's graph pickles read without running code: pickles can run arbitrary code, so they are read
through an unpickler that admits only the few numpy globals an array needs."""

from __future__ import annotations

import importlib
import io
import os
import pickle
from pathlib import Path

import numpy as np

from stgnn_launch.config.paths import existing_file
from stgnn_launch.errors import UserError


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
    path = existing_file(path)
    with open(path, "rb") as file:
        try:
            return _GraphUnpickler(file, path).load()
        except UserError:
            raise
        except Exception as err:  # any malformed byte stream: report it, never a traceback
            raise UserError(f"{path}: expected a readable graph pickle, found a broken one ({err})") from err
