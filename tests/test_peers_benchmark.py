"""benchmarks/peers.py (side by side with PyTorch Geometric Temporal 0.56.2) and the dcrnn_pgti fast path
it measures."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from stgnn_launch.models.registry import ModelSpec, build_model
from helpers import REPO

PEERS = REPO / "benchmarks" / "peers.py"
KEYS = ("take_speedup_vs_pgt", "take_speedup_vs_pgt_2features", "take_cpu_speedup_vs_pgt",
        "take_cpu_speedup_vs_pgt_2features", "gpu_feed_gather_speedup_vs_pgt", "dcrnn_step_ratio_vs_pgt",
        "standard_memory_ratio_vs_pgt", "pgt_memcpy_fraction", "ours_memcpy_fraction")


def _pgt_installable() -> str | None:
    """None when PGT is (or can be) installed into benchmarks/.peers, else why not."""
    sys.path.insert(0, str(PEERS.parent))
    try:
        import peers

        peers.ensure_pgt()
    except peers.PeerUnavailable as err:
        return str(err)
    finally:
        sys.path.remove(str(PEERS.parent))
    return None


@pytest.mark.slow
def test_quick_run_ends_with_one_json_line_of_positive_finite_ratios(tmp_path):
    reason = _pgt_installable()
    if reason:
        pytest.skip(f"torch-geometric-temporal 0.56.2 cannot be installed here: {reason}")
    out = tmp_path / "peers.json"
    done = subprocess.run([sys.executable, str(PEERS), "--quick", "--no-tsl", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    last = json.loads(done.stdout.strip().splitlines()[-1])
    for key in KEYS:
        assert math.isfinite(last[key]) and last[key] > 0, (key, last[key])
    assert json.loads(out.read_text()) == last
    gather = last["gather"]
    assert [g["features"] for g in gather] == [1, 2]
    for g in gather:  # equal work: both sides' complete batches, each with its cost and how it is built
        for side in ("pgt", "ours", "gpu_feed_gather"):
            assert g[side]["wall_s"] > 0 and g[side]["cpu_s"] > 0 and g[side]["minor_faults"] >= 0
            assert g[side]["how"]
        assert g["pgt"]["batch_bytes"] == 2 * 64 * 12 * 40 * (g["features"] + 1) * 4  # x and y: every channel
        assert g["ours"]["batch_bytes"] == 64 * 12 * 40 * (g["features"] + 1 + 1) * 4  # x, and y of one channel
        assert g["ours_memcpy"]["bytes"] == g["ours"]["batch_bytes"]
    assert last["pgt_page_faults_per_batch"] < 10  # PGT-I's batches are dropped, not kept alive
    # same information on both sides: inputs of speed (+ a second feature) and time of day
    assert gather[0]["pgt_batch_shapes"][0] == gather[0]["ours_batch_shapes"][0] == [64, 12, 40, 2]
    assert gather[1]["pgt_batch_shapes"][0] == gather[1]["ours_batch_shapes"][0] == [64, 12, 40, 3]
    assert last["dcrnn"]["pgt_output_shape"] == [64, 12, 40, 2] and last["dcrnn"]["ours_output_shape"] == [64, 12, 40, 1]
    assert last["memory"]["pgt"]["windows"] == last["memory"]["ours"]["windows"] == 3000 - 23


def _cell_rollout(model, x: torch.Tensor) -> torch.Tensor:
    """dcrnn_pgti by its definition: DCGRUCell stepped over the W inputs, then once per output step on
    [previous prediction, the other channels with the time of day advanced]."""
    batch, window, nodes, _ = x.shape
    supports = model.graph.on(x)
    steps = x.permute(1, 2, 0, 3)  # node-major, as DCGRUCell takes them
    h = x.new_zeros(nodes, batch, model.hidden)
    for t in range(window):
        h = model.cell(steps[t], h, supports)
    outputs = []
    for rest in model._decoder_rest(steps[-1]):
        h = model.cell(torch.cat([h[..., : model.out_features], rest], dim=-1), h, supports)
        outputs.append(h[..., : model.out_features])
    return torch.stack(outputs).permute(2, 0, 1, 3)


@pytest.mark.parametrize("in_features, out_features, hidden, K, tod_channel", [
    (2, 1, 2, 3, 1),  # PGT-I's configuration: speed + time of day
    (4, 2, 3, 2, 2),  # two measured features, time of day and another covariate
    (1, 1, 2, 3, None),  # no covariate: nothing but the fed-back prediction
])
def test_dcrnn_pgti_matches_its_cell_rollout_values_and_gradients(in_features, out_features, hidden, K, tod_channel):
    rng = np.random.default_rng(3)
    n = 9
    adj = (rng.random((n, n)) < 0.4) * rng.random((n, n))
    np.fill_diagonal(adj, 1.0)
    spec = ModelSpec(num_nodes=n, in_features=in_features, out_features=out_features, window=5, horizon=4,
                     graph=adj.astype(np.float32), steps_per_day=288, tod_channel=tod_channel)
    torch.manual_seed(0)
    model = build_model("dcrnn_pgti", spec, {"K": K, "hidden": hidden}).double()
    x = torch.randn(3, 5, n, in_features, dtype=torch.float64, requires_grad=True)
    fast, reference = model(x), _cell_rollout(model, x)
    assert fast.shape == (3, 4, n, out_features)
    torch.testing.assert_close(fast, reference, rtol=0, atol=1e-12)
    inputs = [x, *model.parameters()]
    for a, b in zip(torch.autograd.grad(fast.square().sum(), inputs), torch.autograd.grad(reference.square().sum(), inputs)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_tsl_stand_in_scatter_matches_a_loop():
    """benchmarks/peers_tsl.py's torch_scatter stand-in: the reductions tsl's graph code asks for."""
    sys.path.insert(0, str(PEERS.parent))
    try:
        import peers_tsl
    finally:
        sys.path.remove(str(PEERS.parent))
    src = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, -6.0], [7.0, 8.0]])
    index = torch.tensor([0, 2, 0, 2])
    expected = {"sum": [[6.0, -4.0], [0.0, 0.0], [10.0, 12.0]], "max": [[5.0, 2.0], [0.0, 0.0], [7.0, 8.0]],
                "mean": [[3.0, -2.0], [0.0, 0.0], [5.0, 6.0]]}
    for reduce, want in expected.items():
        got = peers_tsl._scatter(src, index, dim=0, dim_size=3, reduce=reduce)
        assert torch.equal(got, torch.tensor(want)), reduce
    assert peers_tsl._broadcast(index, src, 0).shape == src.shape
