"""Side by side against torch-spatiotemporal (tsl) 0.9.5, as published: window assembly, one Graph
WaveNet training step, and peak memory, on a METR-LA-shaped series (207 sensors x 34,272 five-minute
steps, synthetic readings, the real METR-LA graph from ../shared/data where present).

1. window assembly, one thread, batch 64, shuffled, each batch dropped after use: tsl's
   `SpatioTemporalDataset` (target, mask, time of day as covariate `u`, the graph as an edge index,
   window = horizon = 12) with its `StandardScaler` inside a `SpatioTemporalDataModule`
   (`TemporalSplitter`, its own DataLoader) against our `take` of `batching=index` on a CPU.
2. one training step (forward, masked MAE on de-normalized outputs, backward, Adam) of each side's own
   Graph WaveNet class at its defaults (tsl `GraphWaveNetModel`: hidden 32, ff 256, 8 layers, learned
   adjacency; ours `gwnet`: 32/32/256/512 channels, 4 blocks x 2 layers, adaptive adjacency), on one
   batch of each side's own loader; the same loop; torch's default thread count; CPU time.
3. peak RSS (VmHWM) of each side's whole path in a fresh process: read the series file, build the
   dataset and loader, cut 20 batches, two Graph WaveNet training steps.

Installed on first use into benchmarks/.peers/tsl (pip --target --no-deps, git-ignored): tsl 0.9.5,
einops, pytorch-lightning, lightning-utilities and torchmetrics. tsl imports torch-scatter and
torch-sparse, which have no wheels for this torch: the smallest stand-ins on top of torch are
registered instead (`scatter` by `Tensor.scatter_reduce`, `broadcast`; `SparseTensor` as a type that is
never built here; every other function raises if called). With the graph given as an edge index, none
of tsl's sparse paths runs in what is measured.

BasicTS 1.1.0 is not run: it pins a CUDA build of torch and old versions of its other dependencies
(an install would replace this environment's torch), and its runner assumes a GPU.

    python benchmarks/peers_tsl.py [--quick]      # also run by benchmarks/peers.py
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import types
from pathlib import Path
from typing import Optional

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from peers import (Cost, PeerUnavailable, Sizes, adjacency, alternate, build_our_source,  # noqa: E402
                   our_series, synthetic_readings)

TSL_VERSION = "0.9.5"
TSL_DIR = HERE / ".peers" / "tsl"
TSL_EXTRAS = ("einops", "pytorch-lightning", "lightning-utilities", "torchmetrics")
METR_ADJ = HERE.parent.parent / "shared" / "data" / "metr-la" / "adj_mx.pkl"
FULL = Sizes(nodes=207, steps=34_272, batch=64, gather_batches=50, dcrnn_steps=1, repeats=3, memcpy_mib=0)
QUICK = Sizes(nodes=30, steps=2_000, batch=64, gather_batches=10, dcrnn_steps=1, repeats=3, memcpy_mib=0)
HOW_TSL = ("tsl: SpatioTemporalDataModule(SpatioTemporalDataset(target, mask, u=time of day, edge index), "
           "StandardScaler, TemporalSplitter).train_dataloader(shuffle): per-sample window slicing, then its "
           "static-graph collate into a StaticBatch (x, u, y, mask, and its scaler)")


def ensure_tsl() -> Path:
    if (TSL_DIR / f"torch_spatiotemporal-{TSL_VERSION}.dist-info").is_dir() and (TSL_DIR / "einops").is_dir():
        return TSL_DIR
    staging = Path(tempfile.mkdtemp(prefix=".peers-tsl-", dir=HERE))
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                           "--no-deps", "--target", str(staging), f"torch-spatiotemporal=={TSL_VERSION}",
                           *TSL_EXTRAS], capture_output=True, text=True)
    if done.returncode != 0:
        raise PeerUnavailable(f"pip install torch-spatiotemporal failed: {done.stderr.strip()[-500:]}")
    if TSL_DIR.exists():
        import shutil

        shutil.rmtree(TSL_DIR)
    TSL_DIR.parent.mkdir(exist_ok=True)
    staging.rename(TSL_DIR)
    return TSL_DIR


# ---- stand-ins for torch_scatter and torch_sparse (module level and typed: tsl scripts its callers) -----
def _broadcast(src: torch.Tensor, other: torch.Tensor, dim: int) -> torch.Tensor:
    if dim < 0:
        dim = other.dim() + dim
    if src.dim() == 1:
        for _ in range(dim):
            src = src.unsqueeze(0)
    for _ in range(src.dim(), other.dim()):
        src = src.unsqueeze(-1)
    return src.expand(other.size())


def _scatter(src: torch.Tensor, index: torch.Tensor, dim: int = -1, out: Optional[torch.Tensor] = None,
             dim_size: Optional[int] = None, reduce: str = "sum") -> torch.Tensor:
    index = _broadcast(index, src, dim)
    if out is None:
        size = list(src.size())
        if dim_size is not None:
            size[dim] = dim_size
        else:
            size[dim] = int(index.max()) + 1 if index.numel() > 0 else 0
        out = torch.zeros(size, dtype=src.dtype, device=src.device)
    how = reduce
    if reduce == "add":
        how = "sum"
    elif reduce == "max":
        how = "amax"
    elif reduce == "min":
        how = "amin"
    elif reduce == "mul":
        how = "prod"
    return out.scatter_reduce_(dim, index, src, how, include_self=False)


def _gather_csr(src: torch.Tensor, indptr: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    raise NotImplementedError("torch_scatter.gather_csr: not in the stand-in")


def _segment_csr(src: torch.Tensor, indptr: torch.Tensor, out: Optional[torch.Tensor] = None,
                 reduce: str = "sum") -> torch.Tensor:
    raise NotImplementedError("torch_scatter.segment_csr: not in the stand-in")


def _unavailable(name: str):
    def call(*args, **kwargs):
        raise NotImplementedError(f"{name}: not in the stand-in (tsl's sparse path is not measured)")
    return call


def install_stand_ins() -> None:
    """torch_scatter and torch_sparse, as little of them as tsl imports, on top of torch."""
    if "torch_scatter" in sys.modules:
        return
    scatter_mod = types.ModuleType("torch_scatter")
    scatter_mod.scatter = _scatter
    scatter_mod.gather_csr = _gather_csr
    scatter_mod.segment_csr = _segment_csr
    utils = types.ModuleType("torch_scatter.utils")
    utils.broadcast = _broadcast
    scatter_mod.utils = utils

    sparse_mod = types.ModuleType("torch_sparse")

    class SparseTensor:  # a type for tsl's isinstance checks; never built in what is measured
        def __init__(self, *args, **kwargs):
            raise NotImplementedError("torch_sparse.SparseTensor: not in the stand-in")

    sparse_mod.SparseTensor = SparseTensor
    for name in ("fill_diag", "matmul", "cat", "set_diag", "remove_diag", "sum", "mul"):
        setattr(sparse_mod, name, _unavailable(f"torch_sparse.{name}"))
    sys.modules.update({"torch_scatter": scatter_mod, "torch_scatter.utils": utils, "torch_sparse": sparse_mod})


def tsl_modules() -> types.SimpleNamespace:
    root = ensure_tsl()
    install_stand_ins()
    if str(root) not in sys.path:
        sys.path.append(str(root))  # last: our environment's own packages win
    from tsl.data import SpatioTemporalDataset
    from tsl.data.datamodule import SpatioTemporalDataModule, TemporalSplitter
    from tsl.data.preprocessing import StandardScaler
    from tsl.nn.models import GraphWaveNetModel

    return types.SimpleNamespace(SpatioTemporalDataset=SpatioTemporalDataset, DataModule=SpatioTemporalDataModule,
                                 TemporalSplitter=TemporalSplitter, StandardScaler=StandardScaler,
                                 GraphWaveNetModel=GraphWaveNetModel)


def graph(nodes: int) -> np.ndarray:
    if nodes == 207 and METR_ADJ.is_file():
        from stgnn_launch.data.graph import load_graph

        return load_graph(METR_ADJ)[0]
    return adjacency(nodes)


def tsl_loader(tsl, values: np.ndarray, tod: np.ndarray, adj: np.ndarray, batch: int):
    """tsl's datamodule over the readings (T x N x 1), their mask and the time of day."""
    a = torch.from_numpy(adj)
    edge_index = a.nonzero().t().contiguous()
    edge_weight = a[edge_index[0], edge_index[1]]
    dataset = tsl.SpatioTemporalDataset(target=values, mask=values != 0, covariates={"u": tod[:, None]},
                                        connectivity=(edge_index, edge_weight), window=12, horizon=12, stride=1)
    module = tsl.DataModule(dataset, scalers={"target": tsl.StandardScaler(axis=(0, 1))},
                            splitter=tsl.TemporalSplitter(val_len=0.1, test_len=0.2), batch_size=batch, workers=0)
    module.setup()
    return module


def masked_mae(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    mask = (true != 0).float()
    return ((pred - true).abs() * mask).sum() / mask.sum().clamp_min(1.0)


def tsl_step(tsl, sizes: Sizes, module):
    """tsl's Graph WaveNet training step on one batch of its own loader; and the model's output shape."""
    torch.manual_seed(0)
    batch = next(iter(module.train_dataloader(shuffle=True)))
    scaler = batch.transform["y"]
    model = tsl.GraphWaveNetModel(input_size=1, output_size=1, horizon=12, exog_size=1, n_nodes=sizes.nodes)
    opt = torch.optim.Adam(model.parameters(), lr=0.001)
    inputs = (batch.input.x, batch.input.edge_index, batch.input.edge_weight, batch.input.u)

    def step() -> None:
        loss = masked_mae(scaler.inverse_transform(model(*inputs)), batch.target.y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()

    return step, {"tsl_output_shape": list(model(*inputs).shape),
                  "tsl_parameters": sum(p.numel() for p in model.parameters())}


def our_step(sizes: Sizes, ours, adj: np.ndarray):
    """Our gwnet's training step (the same loop and loss) on one batch of our loader."""
    from stgnn_launch.models.registry import ModelSpec, build_model

    torch.manual_seed(0)
    prepared = ours.prepared
    spec = ModelSpec(num_nodes=sizes.nodes, in_features=prepared.in_features, out_features=1, window=12, horizon=12,
                     graph=adj, steps_per_day=288, tod_channel=prepared.tod_channel)
    params = dict(residual_channels=32, dilation_channels=32, skip_channels=256, end_channels=512, kernel_size=2,
                  blocks=4, layers=2, dropout=0.3, embed_dim=10, order=2, adaptive_adj=True)  # conf/model/gwnet.yaml
    model = build_model("gwnet", spec, params)
    opt = torch.optim.Adam(model.parameters(), lr=0.001)
    x, y = ours.take("train", torch.randperm(ours.count("train"))[:sizes.batch])
    mean, std = prepared.scaler.mean[:1], prepared.scaler.std[:1]

    def step() -> None:
        loss = masked_mae(model(x) * std + mean, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss.item()

    return step, {"ours_output_shape": list(model(x).shape),
                  "ours_parameters": sum(p.numel() for p in model.parameters())}


def comparison(sizes: Sizes) -> dict:
    tsl = tsl_modules()
    values, tod = synthetic_readings(sizes, 1)
    adj = graph(sizes.nodes)
    module = tsl_loader(tsl, values, tod, adj, sizes.batch)
    ours = build_our_source(our_series(values, adj), "index")
    k, b = sizes.gather_batches, sizes.batch
    n = ours.count("train")
    first = next(iter(module.train_dataloader(shuffle=True)))

    def run_tsl() -> None:
        batches = iter(module.train_dataloader(shuffle=True))
        for _ in range(k):
            batch = next(batches)
        del batch

    def run_ours() -> None:
        order = torch.randperm(n)
        for i in range(k):
            x, y = ours.take("train", order[i * b:(i + 1) * b])
        del x, y

    default_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tsl_cost, ours_cost = alternate(sizes.repeats, run_tsl, run_ours)
    torch.set_num_threads(default_threads)
    tsl_train_step, tsl_shapes = tsl_step(tsl, sizes, module)
    our_train_step, our_shapes = our_step(sizes, ours, adj)
    shapes = {**tsl_shapes, **our_shapes}

    def repeat(step):
        return lambda: [step() for _ in range(sizes.dcrnn_steps)]

    tsl_train, ours_train = alternate(sizes.repeats, repeat(tsl_train_step), repeat(our_train_step))
    memory = {}
    with tempfile.TemporaryDirectory(prefix="stgnn-tsl-") as tmp:
        np.save(Path(tmp) / "values.npy", values)
        np.save(Path(tmp) / "tod.npy", tod)
        for which in ("tsl", "ours"):
            done = subprocess.run([sys.executable, __file__, "--memory-child", which, "--data", tmp,
                                   *(["--quick"] if sizes.nodes != FULL.nodes else [])],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"tsl memory child {which} failed:\n{done.stderr[-2000:]}")
            memory[which] = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        "assembly": {"tsl": _per_batch(tsl_cost, k), "ours": _per_batch(ours_cost, k), "how_tsl": HOW_TSL,
                     "tsl_batch_keys": sorted(first.keys()), "tsl_x_shape": list(first.input.x.shape)},
        "gwnet_step": {"tsl": _per_batch(tsl_train, sizes.dcrnn_steps), "ours": _per_batch(ours_train, sizes.dcrnn_steps),
                       "threads": torch.get_num_threads(), **shapes},
        "memory": memory,
        "sizes": {"nodes": sizes.nodes, "steps": sizes.steps, "batch": b, "repeats": sizes.repeats},
        "real_graph": sizes.nodes == 207 and METR_ADJ.is_file(),
        "stand_ins": "torch_scatter (scatter via Tensor.scatter_reduce, broadcast) and torch_sparse (SparseTensor "
                     "type only), on top of torch: no wheels of either for this torch",
        "version": TSL_VERSION,
    }


def _per_batch(cost: Cost, count: int) -> dict:
    return {"wall_s": cost.wall_s / count, "cpu_s": cost.cpu_s / count, "minor_faults": cost.minor_faults / count}


def memory_child(which: str, folder: Path, sizes: Sizes) -> None:
    """Fresh process: read the series, build the loader, cut 20 batches, two Graph WaveNet steps."""
    def peak() -> int:
        status = Path("/proc/self/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) * 1024

    tsl = tsl_modules() if which == "tsl" else None
    from stgnn_launch.models.registry import build_model  # noqa: F401 (imports count in the baseline)

    baseline = peak()
    values, tod = np.load(folder / "values.npy"), np.load(folder / "tod.npy")
    adj = graph(sizes.nodes)
    if tsl:
        module = tsl_loader(tsl, values, tod, adj, sizes.batch)
        del values, tod
        batches = iter(module.train_dataloader(shuffle=True))
        for _ in range(20):
            next(batches)
        step = tsl_step(tsl, sizes, module)[0]
    else:
        ours = build_our_source(our_series(values, adj), "index")
        del values, tod
        order = torch.randperm(ours.count("train"))
        for i in range(20):
            ours.take("train", order[i * sizes.batch:(i + 1) * sizes.batch])
        step = our_step(sizes, ours, adj)[0]
    step()
    step()
    print(json.dumps({"baseline_rss_bytes": baseline, "peak_rss_bytes": peak()}))


def summary(result: dict) -> dict:
    a, s, m = result["assembly"], result["gwnet_step"], result["memory"]
    return {
        "tsl_assembly_speedup": a["tsl"]["cpu_s"] / a["ours"]["cpu_s"],
        "tsl_assembly_wall_speedup": a["tsl"]["wall_s"] / a["ours"]["wall_s"],
        "tsl_gwnet_step_speedup": s["tsl"]["cpu_s"] / s["ours"]["cpu_s"],
        "tsl_gwnet_step_wall_speedup": s["tsl"]["wall_s"] / s["ours"]["wall_s"],
        "tsl_peak_memory_ratio": m["ours"]["peak_rss_bytes"] / m["tsl"]["peak_rss_bytes"],
        "tsl": result,
    }


def run(quick: bool) -> dict:
    result = comparison(QUICK if quick else FULL)
    out = summary(result)
    a, s, m = result["assembly"], result["gwnet_step"], result["memory"]
    print(f"tsl {TSL_VERSION}, METR-LA shape {result['sizes']['steps']} x {result['sizes']['nodes']}, batch 64")
    print(f"  {HOW_TSL}")
    print(f"{'':48}{'tsl':>12}{'ours':>12}{'tsl/ours':>10}")
    for label, part, key, scale in (("window assembly ms CPU, 1 thread", a, "cpu_s", 1e3),
                                    ("window assembly ms wall, 1 thread", a, "wall_s", 1e3),
                                    (f"Graph WaveNet step s CPU, {s['threads']} threads", s, "cpu_s", 1),
                                    ("Graph WaveNet step s wall", s, "wall_s", 1)):
        print(f"{label:48}{part['tsl'][key] * scale:12.3f}{part['ours'][key] * scale:12.3f}"
              f"{part['tsl'][key] / part['ours'][key]:10.2f}")
    print(f"{'peak RSS MiB (load, loader, 20 batches, 2 steps)':48}{m['tsl']['peak_rss_bytes'] / 2**20:12,.0f}"
          f"{m['ours']['peak_rss_bytes'] / 2**20:12,.0f}")
    print("  stand-ins: " + result["stand_ins"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--memory-child", choices=["tsl", "ours"], help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, Path(args.data), QUICK if args.quick else FULL)
        return
    out = run(args.quick)
    print(json.dumps({k: v for k, v in out.items() if k != "tsl"}))


if __name__ == "__main__":
    main()
