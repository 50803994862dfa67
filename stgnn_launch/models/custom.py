"""model=custom: a model class of the user's own, named by import path, under the built-in models' contract.

    stgnn-train model=custom model.target=my_package.my_module:MyModel model.params.hidden=64

The class is built as `MyModel(spec, **model.params)` (see `registry.ModelSpec`) and must map
x: B x W x N x F_in to B x H x N x F_out in the z-scored space. Its forward may take a `targets=`
keyword (z-scored B x H x N x F_out, given while training, for teacher forcing) or only x.
Before training, one forward on a zeros batch of 2 checks the output shape. The user's module is kept
as the submodule `net`, so checkpoints hold its weights under `net.<its own keys>`.

Import paths: `pkg.module:Class`, `pkg.module.Class`, or `path/to/file.py:Class`. Modules are found on
sys.path plus the launch directory (as `python -m` would), so the torchrun and Slurm ranks, which run in
that directory with the launcher's environment, import the same class.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from stgnn_launch.errors import UserError
from stgnn_launch.models.registry import ModelSpec, register

# Optional packages whose import failure deserves more than "No module named ...".
INSTALL_HINTS = {
    "torch_geometric_temporal": (
        "PyTorch Geometric Temporal is optional: pip install torch-geometric-temporal==0.56.2, plus torch-scatter "
        "and torch-sparse built for your torch and CUDA (PyG's wheel index, see the README section 'Your own model')"),
    "torch_sparse": "torch-sparse has no wheel for every torch: install the one built for your torch and CUDA "
                    "from PyG's wheel index (README, 'Your own model')",
    "torch_scatter": "torch-scatter has no wheel for every torch: install the one built for your torch and CUDA "
                     "from PyG's wheel index (README, 'Your own model')",
}


def split_import_path(path: str, key: str) -> tuple[str, str]:
    """'a.b:C' / 'a.b.C' / 'dir/f.py:C' -> (module or file, attribute)."""
    module, sep, name = path.rpartition(":") if ":" in path else path.rpartition(".")
    if not module or not name or not name.isidentifier():
        raise UserError(f"{key}: expected an import path module:Class, module.Class or file.py:Class, found {path!r}")
    return module, name


def _import_file(file: str, key: str) -> Any:
    path = Path(file).expanduser().resolve()
    if not path.is_file():
        raise UserError(f"{key}: expected a Python file, found no file {str(path)!r}")
    # A stable module name per file: dataclasses, pickling and tracebacks look modules up in sys.modules.
    name = f"stgnn_user_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[name]
        raise UserError(f"{key}: importing {str(path)!r} failed: {type(err).__name__}: {err}") from err
    return module


def _import_module(module: str, key: str) -> Any:
    if os.getcwd() not in sys.path:  # the launch directory, as `python -m` puts it first; last here: no shadowing
        sys.path.append(os.getcwd())
    try:
        return importlib.import_module(module)
    except Exception as err:
        missing = getattr(err, "name", None) or ""
        hint = INSTALL_HINTS.get(missing.partition(".")[0]) or INSTALL_HINTS.get(module.partition(".")[0])
        where = "expected a module on PYTHONPATH or in the launch directory, or a file path file.py:Class"
        raise UserError(f"{key}: cannot import module {module!r} ({type(err).__name__}: {err}); "
                        f"{hint or where}") from err


def load_object(path: str, key: str) -> Any:
    """The object an import path names; one UserError naming `key` and the path when that fails."""
    module_name, name = split_import_path(path, key)
    is_file = module_name.endswith(".py") or os.sep in module_name
    module = _import_file(module_name, key) if is_file else _import_module(module_name, key)
    if not hasattr(module, name):
        raise UserError(f"{key}: expected {module_name!r} to define {name!r}, found no such name")
    return getattr(module, name)


def construct(cls: Any, key: str, path: str, contract: str, *args: Any, **kwargs: Any) -> nn.Module:
    """cls(*args, **kwargs), after checking that its signature accepts them (so that a TypeError raised
    inside the user's own code still shows as theirs)."""
    if not isinstance(cls, type) or not issubclass(cls, nn.Module):
        raise UserError(f"{key}: expected {path!r} to name a torch.nn.Module subclass, found {cls!r}")
    try:
        inspect.signature(cls).bind(*args, **kwargs)
    except TypeError as err:
        raise UserError(f"{key}: expected {path} to be built as {contract}, found it does not accept "
                        f"that: {err}") from None
    return cls(*args, **kwargs)


def accepts_keyword(fn: Callable, name: str) -> bool:
    params = inspect.signature(fn).parameters.values()
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in params)


def check_output_shape(model: nn.Module, spec: ModelSpec, what: str) -> None:
    """One forward on a zeros batch of 2 (eval mode, no grad, the global RNG left as it was): the output
    must be B x H x N x F_out. Runs on the CPU, where `build_model` builds every model."""
    x = torch.zeros(2, spec.window, spec.num_nodes, spec.in_features)
    expected = (2, spec.horizon, spec.num_nodes, spec.out_features)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            out = model(x)
    except Exception as err:
        raise UserError(f"{what}: expected a forward that maps B x W x N x F_in = {tuple(x.shape)} to "
                        f"B x H x N x F_out = {expected}, found it raises {type(err).__name__}: {err}") from err
    finally:
        for module, training in modes:
            module.training = training
    found = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
    if found != expected:
        raise UserError(f"{what}: expected an output of shape B x H x N x F_out = {expected} for an input of "
                        f"shape {tuple(x.shape)}, found {found}")


@register("custom")
class CustomModel(nn.Module):
    """The user's model as the submodule `net`, called as the trainer calls every model."""

    trainable = True

    def __init__(self, spec: ModelSpec, _target_: str, **params: Any):
        super().__init__()
        cls = load_object(_target_, "model.target")
        contract = f"{getattr(cls, '__name__', cls)}(spec, **model.params) with model.params {sorted(params)}"
        self.net = construct(cls, "model.target", _target_, contract, spec, **params)
        self._pass_targets = accepts_keyword(self.net.forward, "targets")
        check_output_shape(self, spec, f"model.target {_target_}")

    def forward(self, x: Tensor, targets: Tensor | None = None) -> Tensor:
        return self.net(x, targets=targets) if self._pass_targets else self.net(x)
