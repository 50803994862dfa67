"""Your own data and model, first time right: the README's dataset=custom recipe runs as written, inspect
tells a graph from a series and points to --axis-order, a model that knows its dataset's node count passes
the launcher's check and trains, and baselines get no advice to train longer."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from helpers import REPO
from stgnn_launch.cli.data import main as stgnn_data

PROGRAMS = {"stgnn-data": "stgnn_launch.cli.data", "stgnn-train": "stgnn_launch.cli.train"}
TINY_TRAIN = ("trainer.max_epochs=1", "model.params.hidden=4", "batching.batch_size=32", "trainer.progress=false")


def write_flows(folder, steps=400, nodes=5, name="my_flows.csv"):
    """15-minute flows with a daily cycle, some exact zeros (real readings), header of sensor ids."""
    rng = np.random.default_rng(0)
    t = np.arange(steps)[:, None]
    flows = np.round(np.maximum(0, 200 + 150 * np.sin(2 * np.pi * t / 96) + rng.normal(0, 20, (steps, nodes))))
    flows[rng.random(flows.shape) < 0.1] = 0
    lines = [",".join(f"40{i:02d}" for i in range(nodes))] + [",".join(f"{v:g}" for v in row) for row in flows]
    (folder / name).write_text("\n".join(lines) + "\n")
    adjacency = ((np.eye(nodes) + np.roll(np.eye(nodes), 1, axis=1) + np.roll(np.eye(nodes), -1, axis=1)) > 0)
    np.fill_diagonal(adjacency, False)
    np.savetxt(folder / "my_adj.csv", adjacency.astype(int), delimiter=",", fmt="%d")
    return nodes


def run(args, cwd, timeout=300):
    proc = subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(cwd), str(REPO)]))})
    return proc.returncode, proc.stdout + proc.stderr


def readme_recipe() -> list[list[str]]:
    text = (REPO / "README.md").read_text()
    block = text.split("## Your own data\n", 1)[1].split("```bash runnable\n", 1)[1].split("```", 1)[0]
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            commands.append(shlex.split(line))
    return commands


def test_the_readme_recipe_runs_as_written(tmp_path):
    write_flows(tmp_path)
    commands = readme_recipe()
    assert [c[0] for c in commands] == ["stgnn-data", "stgnn-data", "stgnn-train"]
    outputs = []
    for program, *args in commands:
        if program == "stgnn-train":
            args += [*TINY_TRAIN, f"hydra.run.dir={tmp_path / 'run'}"]
        code, out = run([PROGRAMS[program], *args], cwd=tmp_path)
        assert code == 0, out
        outputs.append(out)
    assert "step:           15min" in outputs[0]
    assert "read as:" in outputs[1] and "nodes:" in outputs[1] and "shape:" not in outputs[1]
    train = outputs[2]
    assert re.search(r"missing: +0 of 2,000 readings \(0\.0%\)", train)
    assert re.search(r"MAPE over: +\|y\| > [\d.]+ \(auto", train)
    assert (tmp_path / "run" / "results.json").is_file()


def test_inspect_reads_a_square_01_csv_as_a_graph_and_points_3d_arrays_to_axis_order(tmp_path, capsys):
    rng = np.random.default_rng(1)
    adjacency = (rng.random((12, 12)) < 0.3).astype(int)
    np.savetxt(tmp_path / "adj.csv", adjacency, delimiter=",", fmt="%d")
    assert stgnn_data(["inspect", str(tmp_path / "adj.csv")]) == 0
    out = capsys.readouterr().out
    assert "nodes:" in out and "12" in out and "a square 12 x 12 matrix of 0/1" in out
    assert "shape:" not in out and "start:" not in out  # not a 12-step series with an invented start

    weights = rng.random((9, 9)) * (rng.random((9, 9)) < 0.5)
    np.fill_diagonal(weights, 0)
    np.save(tmp_path / "weights.npy", weights)
    assert stgnn_data(["inspect", str(tmp_path / "weights.npy")]) == 0
    assert "with a diagonal of 0" in capsys.readouterr().out

    np.save(tmp_path / "series.npy", rng.random((50, 9)))  # not square: a series, as before
    assert stgnn_data(["inspect", str(tmp_path / "series.npy")]) == 0
    assert "shape:          50 x 9 x 1" in capsys.readouterr().out

    np.savez(tmp_path / "cube.npz", x=rng.random((40, 6, 2)))
    assert stgnn_data(["inspect", str(tmp_path / "cube.npz")]) == 2
    err = capsys.readouterr().err
    assert "pass --axis-order TNF or NTF or NFT or TFN" in err and len(err.strip().splitlines()) == 1
    assert stgnn_data(["inspect", str(tmp_path / "cube.npz"), "--axis-order", "TNF"]) == 0


OWN_GRAPH_MODEL = textwrap.dedent('''
    import numpy as np
    import torch
    from torch import nn


    class OwnGraphNet(nn.Module):
        """Reads its own adjacency file and refuses any other node count (as many research models do)."""

        def __init__(self, spec, adj_path, hidden=8):
            super().__init__()
            adjacency = torch.tensor(np.loadtxt(adj_path, delimiter=","), dtype=torch.float32)
            assert spec.num_nodes == adjacency.shape[0], f"built for {adjacency.shape[0]} nodes, not {spec.num_nodes}"
            self.adjacency = adjacency / adjacency.sum(1, keepdim=True).clamp_min(1)  # plain: DDP broadcasts buffers
            self.horizon, self.out_features = spec.horizon, spec.out_features
            self.inp = nn.Linear(spec.window * spec.in_features, hidden)
            self.out = nn.Linear(hidden, spec.horizon * spec.out_features)

        def forward(self, x):
            b, w, n, f = x.shape
            h = torch.relu(self.inp(x.permute(0, 2, 1, 3).reshape(b, n, w * f)))
            h = h + self.adjacency.to(x.device) @ h
            return self.out(h).view(b, n, self.horizon, self.out_features).transpose(1, 2)
''')


def test_a_model_that_checks_its_node_count_against_the_dataset_trains(tmp_path):
    nodes = write_flows(tmp_path)
    (tmp_path / "own_graph.py").write_text(OWN_GRAPH_MODEL)
    code, out = run(["stgnn_launch.cli.train", "dataset=custom", "dataset.path=my_flows.csv",
                     "dataset.adj_path=my_adj.csv", "dataset.freq=15min", "dataset.null_value=null",
                     "model=custom", "model.target=own_graph:OwnGraphNet", f"model.params.adj_path={tmp_path / 'my_adj.csv'}",
                     *TINY_TRAIN, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert code == 0, out
    assert "model:      own_graph:OwnGraphNet (model=custom)" in out  # the class, not `custom`
    assert json.loads((tmp_path / "run" / "results.json").read_text())["dataset"]["num_nodes"] == nodes


def test_a_baseline_as_the_model_gets_no_advice_to_train_longer(tmp_path, capsys):
    from helpers import compose_config
    from stgnn_launch.train.run import run_training

    rng = np.random.default_rng(2)
    walk = 100 + np.cumsum(rng.normal(0, 5, (400, 4)), axis=0)  # a random walk: persistence is the best forecast
    np.save(tmp_path / "walk.npy", walk)
    np.save(tmp_path / "adj.npy", np.ones((4, 4), dtype=np.float32))
    cfg = compose_config("dataset=custom", f"dataset.path={tmp_path / 'walk.npy'}", f"dataset.adj_path={tmp_path / 'adj.npy'}",
                         "dataset.null_value=null", "model=historical_average", "batching.batch_size=32",
                         "trainer.progress=false")
    cfg.run_dir = str(tmp_path / "run")
    record = run_training(cfg, tmp_path / "run")
    assert record["beats_persistence"] is False
    assert "train longer" not in capsys.readouterr().out


def test_a_3d_array_without_axis_order_names_the_key_to_set(tmp_path):
    from helpers import compose_config
    from stgnn_launch.data.datasets import dataset_shape
    from stgnn_launch.errors import UserError

    np.save(tmp_path / "cube.npy", np.random.default_rng(3).random((60, 4, 2)))
    np.save(tmp_path / "adj.npy", np.ones((4, 4), dtype=np.float32))
    args = ("dataset=custom", f"dataset.path={tmp_path / 'cube.npy'}", f"dataset.adj_path={tmp_path / 'adj.npy'}")
    with pytest.raises(UserError, match=r"set dataset.axis_order \(TN or NT for a 2-d array; TNF, NTF"):
        dataset_shape(compose_config(*args).dataset)
    assert dataset_shape(compose_config(*args, "dataset.axis_order=TNF").dataset) == (60, 4, 2)
