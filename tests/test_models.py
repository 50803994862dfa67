"""Model contract tests on a tiny random problem: every registered model, then model-specific checks.

The generic tests iterate `available_models()`, so a new model file is covered as soon as it registers.
"""

from __future__ import annotations

import copy
import inspect
import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch.overrides import TorchFunctionMode

from stgnn_launch.models.dcrnn import inverse_sigmoid_decay
from stgnn_launch.models.graph_ops import (
    SparseMatrix,
    SparseOperators,
    gcn_normalized,
    linear_on_blocks,
    random_walk_supports,
    spmm_nodes,
)
from stgnn_launch.models.registry import ModelSpec, available_models, build_model, model_class

N, W, H, B, F_IN, F_OUT, STEPS_PER_DAY, TOD = 6, 12, 12, 4, 2, 1, 24, 1
CONF_DIR = Path(__file__).resolve().parents[1] / "stgnn_launch" / "conf" / "model"
MODELS = available_models()
TRAINABLE = [name for name in MODELS if getattr(model_class(name), "trainable", True)]
GRAPH_RNNS = ["tgcn", "a3tgcn", "dcrnn", "dcrnn_pgti"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny problems gain nothing from intra-op threads and lose much to them on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def random_adjacency(n: int = N, seed: int = 0) -> np.ndarray:
    """Sparse weighted directed graph with a sensor without out-edges and one without in-edges."""
    rng = np.random.default_rng(seed)
    adj = (rng.random((n, n)) < 0.35) * rng.uniform(0.1, 1.0, (n, n))
    adj[0, :] = 0.0
    adj[:, 1] = 0.0
    return adj.astype(np.float32)


def make_spec(n: int = N, steps_per_day: int = STEPS_PER_DAY) -> ModelSpec:
    return ModelSpec(num_nodes=n, in_features=F_IN, out_features=F_OUT, window=W, horizon=H,
                     graph=random_adjacency(n), steps_per_day=steps_per_day, tod_channel=TOD)


def make_batch(n: int = N, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """x: B x W x N x F_IN with channel 1 the time-of-day fraction; y: B x H x N x F_OUT."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, W, n, F_IN, generator=g)
    start = torch.randint(0, STEPS_PER_DAY, (B, 1), generator=g)
    slots = (start + torch.arange(W)) % STEPS_PER_DAY  # B x W
    x[..., TOD] = (slots.float() / STEPS_PER_DAY).unsqueeze(-1).expand(B, W, n)
    return x, torch.randn(B, H, n, F_OUT, generator=g)


def train_series(spec: ModelSpec, steps: int = 100, seed: int = 0):
    rng = np.random.default_rng(seed)
    values = rng.standard_normal((steps, spec.num_nodes, spec.out_features)).astype(np.float32)
    observed = rng.random(values.shape) > 0.2
    return values, observed, np.arange(steps) % spec.steps_per_day


def build(name: str, spec: ModelSpec, seed: int = 0, fit: bool = True, **params) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(name, spec, params)
    if fit and not getattr(model, "trainable", True):
        model.fit(*train_series(spec))
    return model


def save_load(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


# ---- every registered model ------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_output_shape_and_finite(name):
    model = build(name, make_spec()).eval()
    x, _ = make_batch()
    with torch.no_grad():
        out = model(x)
    assert out.shape == (B, H, N, F_OUT)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", TRAINABLE)
def test_training_lowers_loss_and_reaches_every_parameter(name):
    model = build(name, make_spec()).train()
    x, y = make_batch()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    torch.manual_seed(1)
    losses = []
    for step in range(20):
        optimizer.zero_grad()
        loss = (model(x, targets=y) - y).abs().mean()
        loss.backward()
        if step == 0:  # every parameter takes part in the output
            missing = [k for k, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
            assert missing == []
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-3:]) < 0.98 * losses[0], losses


@pytest.mark.parametrize("name", MODELS)
def test_same_seed_gives_identical_outputs(name):
    spec = make_spec()
    x, y = make_batch()
    outputs = []
    for _ in range(2):
        model = build(name, spec, seed=0)
        torch.manual_seed(7)  # dropout masks and DCRNN's sampling coins
        train_out = model.train()(x, targets=y)
        with torch.no_grad():
            eval_out = model.eval()(x)
        outputs.append((train_out.detach(), eval_out))
    assert torch.equal(outputs[0][0], outputs[1][0])
    assert torch.equal(outputs[0][1], outputs[1][1])


@pytest.mark.parametrize("name", MODELS)
def test_state_dict_round_trip(name):
    spec = make_spec()
    x, y = make_batch()
    model = build(name, spec, seed=0)
    model.train()(x, targets=y)  # advance any training state (DCRNN's batches_seen)
    state = save_load(model.state_dict())
    twin = build(name, spec, seed=1, fit=False)
    twin.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), twin.eval()(x))


@pytest.mark.parametrize("name", MODELS)
def test_deepcopy_gives_identical_outputs(name):
    model = build(name, make_spec()).eval()
    x, _ = make_batch()
    with torch.no_grad():
        model(x)  # materialize the lazily built sparse operators first
        assert torch.equal(copy.deepcopy(model)(x), model(x))


@pytest.mark.parametrize("name", MODELS)
def test_checkpoint_holds_no_graph_matrix(name):
    """The N x N operators are plain attributes: no buffer/parameter of shape N x N (DDP, checkpoints)."""
    model = build(name, make_spec())
    assert all(tuple(t.shape[-2:]) != (N, N) for t in model.state_dict().values() if isinstance(t, torch.Tensor))


@pytest.mark.parametrize("name", MODELS)
def test_config_file_matches_constructor(name):
    path = CONF_DIR / f"{name}.yaml"
    assert path.is_file(), f"missing {path}"
    conf = yaml.safe_load(path.read_text())
    assert conf["name"] == name
    signature = inspect.signature(model_class(name).__init__)
    defaults = {k: p.default for k, p in signature.parameters.items() if p.kind is p.KEYWORD_ONLY}
    assert (conf.get("params") or {}) == defaults
    build_model(name, make_spec(), conf.get("params") or {})


@pytest.mark.parametrize("name", TRAINABLE)
def test_bf16_autocast_forward(name):
    """Sparse products run in float32 under autocast; the rest follows autocast."""
    model = build(name, make_spec()).eval()
    x, _ = make_batch()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.shape == (B, H, N, F_OUT)
    assert torch.isfinite(out.float()).all()


# ---- graph operators -------------------------------------------------------------------------


def dense_gcn_reference(adj: np.ndarray) -> np.ndarray:
    a = adj.astype(np.float64) + np.eye(len(adj))
    d_inv_sqrt = a.sum(1) ** -0.5
    return d_inv_sqrt[:, None] * a * d_inv_sqrt[None, :]


def dense_random_walk_reference(adj: np.ndarray) -> np.ndarray:
    """DCRNN's calculate_random_walk_matrix, dense."""
    d = adj.astype(np.float64).sum(1)
    with np.errstate(divide="ignore"):
        d_inv = np.power(d, -1.0)
    d_inv[np.isinf(d_inv)] = 0.0
    return np.diag(d_inv) @ adj


def sparse_dense(e) -> tuple[np.ndarray, np.ndarray]:
    m = SparseMatrix.build(e, torch.device("cpu"), torch.float32)
    assert m.mat.layout == torch.sparse_csr and m.mat_t.layout == torch.sparse_csr
    return m.mat.to_dense().numpy(), m.mat_t.to_dense().numpy()


def test_gcn_normalization_matches_dense_reference():
    adj = random_adjacency(9, seed=3)
    adj[2, 2] = 0.5  # an existing self-loop: I is still added, as in T-GCN
    mat, mat_t = sparse_dense(gcn_normalized(adj))
    ref = dense_gcn_reference(adj)
    np.testing.assert_allclose(mat, ref, atol=1e-6)
    np.testing.assert_allclose(mat_t, ref.T, atol=1e-6)


def test_random_walk_supports_match_dcrnn_reference():
    adj = random_adjacency(9, seed=4)
    expected = [dense_random_walk_reference(adj).T, dense_random_walk_reference(adj.T).T]
    supports = random_walk_supports(adj)
    assert len(supports) == 2
    for e, ref in zip(supports, expected):
        mat, mat_t = sparse_dense(e)
        np.testing.assert_allclose(mat, ref, atol=1e-6)
        np.testing.assert_allclose(mat_t, ref.T, atol=1e-6)


@pytest.mark.parametrize("shape, node_dim", [((3, 9, 5), 1), ((9, 3, 5), 0), ((2, 4, 9, 3), 2)])
def test_spmm_nodes_matches_dense_product_and_gradient(shape, node_dim):
    adj = random_adjacency(9, seed=5)
    (a,) = SparseOperators([gcn_normalized(adj)]).on(torch.zeros(1))
    dense = torch.from_numpy(dense_gcn_reference(adj)).float()
    x = torch.randn(shape, requires_grad=True)
    out = spmm_nodes(a, x, node_dim=node_dim)
    ref = torch.tensordot(dense, x.movedim(node_dim, 0), dims=1).movedim(0, node_dim)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
    g = torch.randn(shape)
    (grad,) = torch.autograd.grad(out, x, g)
    (grad_ref,) = torch.autograd.grad(ref, x, g)
    torch.testing.assert_close(grad, grad_ref, atol=1e-6, rtol=1e-5)


def test_linear_on_blocks_equals_linear_on_concatenation():
    layer = torch.nn.Linear(3 * 4, 5)
    blocks = [torch.randn(2, 6, 4) for _ in range(3)]
    torch.testing.assert_close(linear_on_blocks(blocks, layer), layer(torch.cat(blocks, dim=-1)))


class _RecordDenseSquare(TorchFunctionMode):
    """Records every strided tensor result whose last two dims are n x n."""

    def __init__(self, n: int):
        super().__init__()
        self.n, self.hits = n, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.layout == torch.strided and t.dim() >= 2:
                if tuple(t.shape[-2:]) == (self.n, self.n):
                    self.hits.append(getattr(func, "__name__", str(func)))
        return out


@pytest.mark.parametrize("name, params", [(n, {}) for n in GRAPH_RNNS] + [("gwnet", {"adaptive_adj": False})])
def test_no_dense_adjacency_in_forward(name, params):
    n = 11  # differs from every other size here (GWNet time lengths included): n x n means a graph matrix
    model = build(name, make_spec(n), **params).train()
    x, y = make_batch(n)
    with _RecordDenseSquare(n) as rec:
        model(x, targets=y).sum().backward()
    assert rec.hits == []
    for op in model.graph.on(x):
        assert op.mat.layout == torch.sparse_csr


# ---- DCRNN scheduled sampling ----------------------------------------------------------------


@pytest.mark.parametrize("b", [0, 1, 1000, 2000, 10_000, 30_000])
def test_dcrnn_teacher_forcing_probability(b):
    k = 2000
    assert inverse_sigmoid_decay(b, k).item() == pytest.approx(k / (k + math.exp(b / k)), rel=1e-12)


def test_dcrnn_teacher_forcing_probability_never_overflows():
    assert inverse_sigmoid_decay(10**9, 2000).item() == 0.0


def test_dcrnn_batches_seen_counts_training_forwards_and_is_saved():
    spec = make_spec()
    x, y = make_batch()
    model = build("dcrnn", spec, rnn_units=8)
    assert model.batches_seen == 0 and not list(model.buffers())  # a host count: nothing for DDP to broadcast
    model.train()
    model(x, targets=y)
    model(x)
    assert int(model.batches_seen) == 2
    with torch.no_grad():
        model.eval()(x, targets=y)
    assert int(model.batches_seen) == 2
    state = save_load(model.state_dict())
    assert state["_extra_state"] == {"batches_seen": 2}
    twin = build("dcrnn", spec, seed=1, rnn_units=8)
    twin.load_state_dict(state)
    assert twin.batches_seen == 2
    legacy = {k: v for k, v in state.items() if k != "_extra_state"} | {"batches_seen": torch.tensor(7)}
    twin.load_state_dict(legacy)  # a checkpoint from when the count was a buffer
    assert twin.batches_seen == 7
    twin.batches_seen = 2
    assert twin.teacher_forcing_probability().item() == pytest.approx(2000 / (2000 + math.exp(2 / 2000)))


def test_dcrnn_feeds_truth_early_and_its_own_output_late():
    spec = make_spec()
    x, y = make_batch()
    other = torch.randn_like(y) * 5
    # p ~ 1: every decoder step after the first sees the targets.
    model = build("dcrnn", spec, rnn_units=8, cl_decay_steps=10**9).train()
    with torch.no_grad():
        a, b = model(x, targets=y), model(x, targets=other)
    assert torch.equal(a[:, 0], b[:, 0])
    assert not torch.allclose(a[:, 1:], b[:, 1:])
    # p ~ 0 after many batches: the targets are never used, training output == eval output.
    model = build("dcrnn", spec, rnn_units=8).train()
    model.batches_seen = 10**6
    with torch.no_grad():
        a, b = model(x, targets=y), model(x, targets=other)
        c = model.eval()(x)
    assert torch.equal(a, b) and torch.equal(a, c)


# ---- PGT-I's DCRNN configuration -------------------------------------------------------------


def test_dcrnn_pgti_is_one_small_cell_whose_state_is_the_prediction():
    model = build("dcrnn_pgti", make_spec())
    assert model.cell.max_diffusion_step == 2  # PGT's K=3 counts the identity term
    assert sum(p.numel() for p in model.parameters()) == 126  # (2 + 2) * 5 -> 4 gates, -> 2 candidate
    x, _ = make_batch()
    out = model(x * 100)  # a GRU state, hence the prediction, stays in (-1, 1) whatever the input
    assert out.abs().max() < 1


# ---- baselines -------------------------------------------------------------------------------


def test_persistence_repeats_last_input_step():
    model = build("persistence", make_spec())
    x, _ = make_batch()
    out = model(x)
    assert torch.equal(out, x[:, -1:, :, :F_OUT].expand(B, H, N, F_OUT))


def test_historical_average_fit_matches_hand_computed_slot_means():
    slots_per_day, n, steps = 4, 3, 14
    spec = make_spec(n, steps_per_day=slots_per_day)
    rng = np.random.default_rng(2)
    values = rng.standard_normal((steps, n, 1))
    observed = rng.random(values.shape) > 0.3
    slots = np.arange(steps) % slots_per_day
    observed[slots == 3, 2, 0] = False  # sensor 2 never seen at slot 3: falls back to its mean
    values[~observed] = np.nan  # missing readings must be ignored, whatever they hold
    model = build("historical_average", spec, fit=False)
    model._chunk = 5  # several accumulation passes over the series
    model.fit(values, observed, slots)
    expected = np.zeros((slots_per_day, n, 1))
    for node in range(n):
        overall = values[observed[:, node, 0], node, 0].mean()
        for s in range(slots_per_day):
            seen = (slots == s) & observed[:, node, 0]
            expected[s, node, 0] = values[seen, node, 0].mean() if seen.any() else overall
    np.testing.assert_allclose(model.table.numpy(), expected, atol=1e-6)


def test_historical_average_looks_up_the_slots_after_the_last_input_step():
    spec = make_spec()
    steps = 3 * STEPS_PER_DAY
    slots = np.arange(steps) % STEPS_PER_DAY
    values = (slots[:, None] * 10 + np.arange(N)[None, :])[..., None].astype(np.float32)  # table[s, n] = 10 s + n
    model = build("historical_average", spec, fit=False)
    model.fit(values, np.ones_like(values, dtype=bool), slots)
    x, _ = make_batch()
    last_slots = torch.tensor([0, 5, 20, 23])
    # fraction of the day with float noise: the slot is rounded, not truncated
    x[:, -1, :, TOD] = (last_slots.float() / STEPS_PER_DAY - 1e-6).unsqueeze(-1)
    out = model(x)
    h = torch.arange(1, H + 1)
    expected = ((last_slots[:, None] + h[None, :]) % STEPS_PER_DAY * 10)[..., None] + torch.arange(N)
    assert torch.equal(out[..., 0], expected.float())


def test_historical_average_refuses_to_predict_unfitted():
    model = build("historical_average", make_spec(), fit=False)
    with pytest.raises(RuntimeError, match="fit"):
        model(make_batch()[0])
