"""model=custom: a model class from a module outside the package trains, on 2 ranks too, resumes, and
every way of naming it wrongly is one clear error."""

import json
import math
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from helpers import REPO, TINY_DATA, compose_config
from stgnn_launch.errors import UserError
from stgnn_launch.models.registry import ModelSpec, build_model
from stgnn_launch.train import checkpoint
from stgnn_launch.train.run import run_training

# A user's module: forward takes x only (no `targets`), plus the classes the error cases need.
USER_MODULE = textwrap.dedent('''
    import torch
    from torch import nn


    class NodeGRU(nn.Module):
        """One GRU shared by all nodes over the window, a linear head to H x F_out."""

        def __init__(self, spec, hidden=16, dropout=0.0):
            super().__init__()
            self.horizon, self.out_features = spec.horizon, spec.out_features
            self.gru = nn.GRU(spec.in_features, hidden, batch_first=True)
            self.drop = nn.Dropout(dropout)
            self.head = nn.Linear(hidden, spec.horizon * spec.out_features)

        def forward(self, x):
            b, w, n, f = x.shape
            _, h = self.gru(x.permute(0, 2, 1, 3).reshape(b * n, w, f))
            y = self.head(self.drop(h[-1])).view(b, n, self.horizon, self.out_features)
            return y.transpose(1, 2)


    class EchoesInput(nn.Module):
        """Returns its input: B x W x N x F_in, not B x H x N x F_out."""

        def __init__(self, spec, hidden=4):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(1))

        def forward(self, x, targets=None):
            return x * self.scale


    class NoSpec(nn.Module):
        def __init__(self, hidden):
            super().__init__()


    def not_a_class(spec):
        return None
''')


@pytest.fixture
def user_module(tmp_path) -> Path:
    folder = tmp_path / "user_code"
    folder.mkdir()
    path = folder / "stgnn_test_user_models.py"
    path.write_text(USER_MODULE)
    return path


def train(run_dir: Path, *overrides: str) -> dict:
    cfg = compose_config(*TINY_DATA, "trainer.patience=50", *overrides)
    cfg.run_dir = str(run_dir)
    return run_training(cfg, run_dir)


def finite_test_metrics(record: dict) -> bool:
    return all(math.isfinite(record["test"][h][k]) for h in ("3", "6", "12", "avg") for k in ("mae", "rmse", "mape"))


def strip_timings(epochs: list[dict]) -> list[dict]:
    """What a run computes, without what it measures (timings)."""
    return [{k: v for k, v in e.items() if k in ("epoch", "train_loss", "val_mae", "lr")} for e in epochs]


def test_module_outside_the_package_trains_with_index_and_resumes(tmp_path, user_module):
    target = f"model.target={user_module}:NodeGRU"  # the file-path spelling
    base = ("model=custom", target, "model.params.hidden=8", "model.params.dropout=0.1", "batching=index",
            "trainer.max_batches_per_epoch=6")
    straight = train(tmp_path / "straight", *base, "trainer.max_epochs=2")
    assert finite_test_metrics(straight) and straight["parameters"] > 0
    train(tmp_path / "resumed", *base, "trainer.max_epochs=1")
    resumed = train(tmp_path / "resumed", *base, "trainer.max_epochs=2", "trainer.resume=true")
    assert strip_timings(resumed["epochs"]) == strip_timings(straight["epochs"])
    assert resumed["test"] == straight["test"]
    weights = checkpoint.load(tmp_path / "resumed" / "checkpoints" / "last.pt")["model"]
    assert set(weights) == {f"net.{k}" for k in ("gru.weight_ih_l0", "gru.weight_hh_l0", "gru.bias_ih_l0",
                                                 "gru.bias_hh_l0", "head.weight", "head.bias")}


def test_custom_wrapping_a_built_in_class_trains_exactly_as_the_built_in(tmp_path):
    """The wrapper and its shape check (eval mode, forked RNG) change nothing: same weights, same numbers
    (with batching=standard, the mode the other tests here leave out)."""
    common = ("model.params.hidden=8", "batching=standard", "trainer.max_epochs=1", "trainer.max_batches_per_epoch=4")
    builtin = train(tmp_path / "builtin", "model=tgcn", *common)
    custom = train(tmp_path / "custom", "model=custom", "model.target=stgnn_launch.models.tgcn.TGCN", *common)
    assert strip_timings(custom["epochs"]) == strip_timings(builtin["epochs"])
    assert custom["test"] == builtin["test"]


def stgnn(args: list[str], cwd: Path, pythonpath: Path | None = None, timeout: float = 300) -> tuple[int, str]:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.slow
def test_two_ranks_dist_index_import_the_module_by_name_train_resume_and_eval(tmp_path, user_module):
    run_dir = tmp_path / "run"
    train_args = ["stgnn_launch.cli.train", *TINY_DATA, f"hydra.run.dir={run_dir}", "model=custom",
                  "model.target=stgnn_test_user_models:NodeGRU", "model.params.hidden=8", "gpus=2",
                  "batching=dist_index", "trainer.max_batches_per_epoch=4"]
    code, out = stgnn(train_args + ["trainer.max_epochs=1"], cwd=REPO, pythonpath=user_module.parent)
    assert code == 0, out
    code, out = stgnn(train_args + ["trainer.max_epochs=2", "trainer.resume=true"], cwd=REPO,
                      pythonpath=user_module.parent)
    assert code == 0, out
    record = json.loads((run_dir / "results.json").read_text())
    assert record["world_size"] == 2 and record["batching"] == "dist_index" and record["model"] == "custom"
    assert [e["epoch"] for e in record["epochs"]] == [1, 2] and finite_test_metrics(record)
    code, out = stgnn(["stgnn_launch.cli.eval", str(run_dir)], cwd=REPO, pythonpath=user_module.parent)
    assert code == 0, out
    metrics = json.loads((run_dir / "eval_test_w1.json").read_text())["metrics"]
    assert metrics["avg"]["mae"] == pytest.approx(record["test"]["avg"]["mae"], abs=1e-6)


def readme_section() -> str:
    text = (REPO / "README.md").read_text()
    match = re.search(r"^## Your own model\n(.*?)(?=^## )", text, flags=re.S | re.M)
    assert match, "README.md has no '## Your own model' section"
    return match.group(1)


@pytest.mark.slow
def test_the_readme_example_runs_as_written(tmp_path):
    """The section's model file, saved under the name it gives, trains with its first command, run from the
    file's folder (the launch directory is on the import path); only the data is made tiny."""
    section = readme_section()
    code = re.search(r"```python\n# (\S+\.py)\n(.*?)```", section, flags=re.S)
    assert code, "the section has no ```python block starting with '# <file>.py'"
    (tmp_path / code.group(1)).write_text(code.group(2))
    assert len(code.group(2).strip().splitlines()) <= 25
    command = next(line for line in section.splitlines() if line.startswith("stgnn-train model=custom"))
    args = command.split("#")[0].split()[1:]
    code_, out = stgnn(["stgnn_launch.cli.train", *args, *TINY_DATA, "trainer.max_epochs=1",
                        "trainer.max_batches_per_epoch=4", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert code_ == 0, out
    assert finite_test_metrics(json.loads((tmp_path / "run" / "results.json").read_text()))


def build(*overrides: str):
    """The model as the trainer builds it (build_model from the composed config), on a 10-node spec."""
    cfg = compose_config(*TINY_DATA, *overrides)
    spec = ModelSpec(num_nodes=10, in_features=2, out_features=1, window=12, horizon=12,
                     graph=np.eye(10, dtype=np.float32), steps_per_day=288, tod_channel=1)
    return build_model(cfg.model.name, spec, dict(cfg.model.params))


@pytest.mark.parametrize("target, message", [
    ("stgnn_no_such_module:Net", "model.target: cannot import module 'stgnn_no_such_module' "
                                 "(ModuleNotFoundError: No module named 'stgnn_no_such_module')"),
    ("{file}:Missing", "model.target: expected '{file}' to define 'Missing', found no such name"),
    ("{dir}/absent.py:Net", "model.target: expected a Python file, found no file '{dir}/absent.py'"),
    ("{file}:NoSpec", "model.target: expected {file}:NoSpec to be built as NoSpec(spec, **model.params) with "
                      "model.params ['hidden'], found it does not accept that"),
    ("{file}:not_a_class", "model.target: expected '{file}:not_a_class' to name a torch.nn.Module subclass"),
    ("{file}:EchoesInput", "model.target {file}:EchoesInput: expected an output of shape B x H x N x F_out = "
                           "(2, 12, 10, 1) for an input of shape (2, 12, 10, 2), found (2, 12, 10, 2)"),
    ("no_colon_or_dot", "model.target: expected an import path module:Class, module.Class or file.py:Class"),
])
def test_each_wrong_target_is_one_error_naming_it_and_what_was_expected(user_module, target, message):
    fill = {"file": str(user_module), "dir": str(user_module.parent)}
    with pytest.raises(UserError) as err:
        build("model=custom", f"model.target={target.format(**fill)}", "model.params.hidden=8")
    assert message.format(**fill) in str(err.value)


def test_model_custom_needs_a_target_and_only_it_takes_one():
    with pytest.raises(UserError, match=r"model.target: expected an import path module:Class or file.py:Class "
                                        r"for model=custom, found None"):
        compose_config("model=custom")
    with pytest.raises(UserError, match=r"model.target: expected unset unless model=custom \(model=tgcn\)"):
        compose_config("model=tgcn", "model.target=a.b:C")
    with pytest.raises(UserError, match=r"model.cell: expected unset unless model=pyg_recurrent"):
        compose_config("model=custom", "model.target=a.b:C", "model.cell=a.b:C")


def test_hydra_style_target_inside_params_is_the_same_key():
    cfg = compose_config("model=custom", "model.params._target_=pkg.mod:Net", "model.params.hidden=4")
    assert cfg.model.target == "pkg.mod:Net" and cfg.model.params == {"hidden": 4, "_target_": "pkg.mod:Net"}


def test_a_wrong_target_stops_stgnn_train_with_one_line(tmp_path):
    code, out = stgnn(["stgnn_launch.cli.train", *TINY_DATA, f"hydra.run.dir={tmp_path / 'run'}", "model=custom",
                       "model.target=stgnn_no_such_module:Net"], cwd=tmp_path)
    assert code == 2
    assert "stgnn-train: error: model.target: cannot import module 'stgnn_no_such_module'" in out
    assert "Traceback" not in out
