"""trainer.compile=true that pays off: dynamo keeps each model in one graph (the sparse product is the
`stgnn::csr_mm` operator, not a sparse tensor it cannot trace), and the compiled model computes what the
eager one does, gradients included."""

import warnings

import pytest
import torch

from helpers import TINY_PARAMS
from stgnn_launch.models.graph_ops import csr_mm
from stgnn_launch.models.registry import ModelSpec, build_model
from stgnn_launch.planning.probe import _probe_graph

# T-GCN broke its graph 11 times, DCRNN 18, Graph WaveNet 3 (torch._dynamo.explain, before the operator);
# DCRNN keeps one break on purpose: its teacher-forcing coins and host count run eagerly (no recompiles).
BREAKS = {"tgcn": 0, "a3tgcn": 0, "dcrnn": 1, "gwnet": 0}


def _model(name: str):
    spec = ModelSpec(num_nodes=12, in_features=2, out_features=1, window=12, horizon=12, graph=_probe_graph(12),
                     steps_per_day=288, tod_channel=1)
    hparams = {p.split("=")[0].removeprefix("model.params."): int(p.split("=")[1]) for p in TINY_PARAMS[name]}
    torch.manual_seed(0)
    return build_model(name, spec, hparams).train()


@pytest.mark.parametrize("name", list(BREAKS))
def test_graph_breaks_per_training_forward(name):
    import torch._dynamo as dynamo

    model = _model(name)
    x, y = torch.rand(3, 12, 12, 2), torch.rand(3, 12, 12, 1)
    model(x, targets=y)  # the first call materialises the sparse operators on this device (cached after)
    dynamo.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        explained = dynamo.explain(model)(x, targets=y)
    assert explained.graph_break_count == BREAKS[name], [str(b.reason)[:200] for b in explained.break_reasons]


def test_compiled_sparse_product_matches_eager_with_gradients():
    model = _model("tgcn").eval()
    x = torch.rand(3, 12, 12, 2, requires_grad=True)
    eager = model(x)
    eager.sum().backward()
    grad = x.grad.clone()
    x.grad = None
    compiled = torch.compile(model, backend="eager")  # dynamo's graph, run by eager kernels: exact comparison
    out = compiled(x)
    out.sum().backward()
    assert torch.equal(out, eager) and torch.equal(x.grad, grad)


def test_csr_mm_operator_is_the_sparse_product():
    dense = torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.0, 0.0], [0.0, 3.0, 4.0]])
    a, t = dense.to_sparse_csr(), dense.t().contiguous().to_sparse_csr()
    x = torch.rand(3, 5, requires_grad=True)
    out = csr_mm(a.crow_indices(), a.col_indices(), a.values(), t.crow_indices(), t.col_indices(), t.values(), x)
    torch.testing.assert_close(out, dense @ x)
    out.sum().backward()
    torch.testing.assert_close(x.grad, dense.t() @ torch.ones(3, 5))
