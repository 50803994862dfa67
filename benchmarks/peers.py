"""Side by side against PyTorch Geometric Temporal 0.56.2's index batching (PGT-I), as published, in one run,
on equal work.

Three comparisons on the same synthetic PEMS-BAY-shaped data (325 sensors x 52,116 five-minute steps,
the real PEMS-BAY graph where ../shared/data has it):

1. the complete CPU batch, one thread, batch 64, shuffled, each side producing the batch its model
   receives and dropping it before the next, as a training loop does:
   - PGT-I: its `get_index_dataset` DataLoader (`IndexDataset`: per-sample slices of its z-scored
     T x N x C array of the measured features and time of day, then default collate), x and y of C
     channels each;
   - ours: `take` of `batching=index` on a CPU (inputs: one row gather from the z-scored input table
     built at load; targets: one row gather of the raw series), y of one channel: we produce fewer bytes.
   With speed + time of day, then with two measured features + time of day. Reported: wall time and
   process CPU time per batch (medians of alternating runs), minor page faults per batch, the bytes each
   side produces, and the one-thread memcpy rate of those same bytes, memory to memory and, named as
   such, with source and destination resident in cache.
   Also, named as what it is, the raw row gather of a GPU run's feed thread (W + H raw rows into a
   reused staging buffer; z-score and covariates then run on the GPU): host-side work, not a batch.
2. one training step (forward, loss, backward, Adam) of our `dcrnn_pgti` against PGT's `BatchedDCRNN`
   as its indexBatching/DCRNN example trains it: `BatchedDCRNN(2, 2, K=3)`, masked MAE on the
   de-normalized outputs of all channels. Torch's default thread count for both; CPU time.
3. peak RSS of PGT's standard path (`PemsBayDatasetLoader.get_dataset`, then every window copied out
   into tensors as its batched examples do) against our `batching=standard`, each in a fresh process.

4. tsl 0.9.5 (benchmarks/peers_tsl.py, METR-LA shape): window assembly, one Graph WaveNet training
   step with each side's own model class, peak memory; its ratios join the JSON line (--no-tsl: not run).

Timings alternate PGT / ours and report the median of the repeats; ratios are what to read.

    python benchmarks/peers.py            # PEMS-BAY shape
    python benchmarks/peers.py --quick    # small shapes, a smoke test

PGT is installed on first use into benchmarks/.peers (pip --target, git-ignored): the package itself
with --no-deps, plus dask, which its IndexDataset imports. Nothing of PGT is copied here. The last line
printed is one JSON object (also written to benchmarks/peers.json).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import types
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
PEERS = HERE / ".peers"
PGT_VERSION = "0.56.2"
ADJ_PATH = HERE.parent.parent / "shared" / "data" / "pems-bay" / "adj_mx_bay.pkl"
START = "2017-01-01T00:00"
STEPS_PER_DAY = 288


# ---- our side: the one place that knows how our batches are built from a Series -------------------
@dataclass
class OurData:
    take: Callable[[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # (split, positions) -> (x, y)
    count: Callable[[str], int]  # windows in a split
    prepared: object  # stgnn_launch's Prepared: scaler, covariates, starts
    gather: Callable[[str, torch.Tensor, tuple], tuple]  # the feed thread's host-side work, into `out` buffers
    part_shapes: Callable[[int], list]  # the staging buffers' shapes and dtypes for a batch size


def build_our_source(series, mode: str, compute_device: torch.device | None = None) -> OurData:
    """Our `mode` ("index" | "standard" | "dist_index") batches of `series`, DCRNN protocol, W = H = 12:
    take(split, positions) gives x: B x W x N x (F + C) (z-scored readings, time of day) and
    y: B x H x N x 1 (raw speed), as stgnn-train's data path builds them for a finish on `compute_device`
    (default: this CPU; pass a GPU device, even a "meta" one, for the raw gather a GPU run's feed does)."""
    from stgnn_launch.data.prepare import PrepareSpec, prepare

    prepared = prepare(series, PrepareSpec(window=12, horizon=12, train_ratio=0.7, test_ratio=0.2, null_value=0.0))
    from stgnn_launch.data.batching import build_source, take

    source = build_source(mode, prepared, torch.device("cpu"), compute_device)
    return OurData(lambda split, positions: take(source, split, positions), source.count, prepared,
                   source.gather, source.part_shapes)


@dataclass(frozen=True)
class Sizes:
    nodes: int
    steps: int
    batch: int  # samples per batch, both sides
    gather_batches: int  # batches per timed gather run
    dcrnn_steps: int  # training steps per timed DCRNN run
    repeats: int  # alternating runs per comparison; the median is reported
    memcpy_mib: int  # size of the memcpy probe


FULL = Sizes(nodes=325, steps=52_116, batch=64, gather_batches=200, dcrnn_steps=3, repeats=7, memcpy_mib=256)
QUICK = Sizes(nodes=40, steps=3_000, batch=64, gather_batches=10, dcrnn_steps=1, repeats=3, memcpy_mib=16)


# ---- data: one synthetic series, seen by both sides -----------------------------------------------
def synthetic_readings(sizes: Sizes, features: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """T x N x F float32 readings with a daily cycle (speed first; a second feature, flow-like, if asked),
    ~0.5% missing as zeros, and the T time-of-day fractions of its 5-minute steps from START."""
    rng = np.random.default_rng(seed)
    tod = (np.arange(sizes.steps) % STEPS_PER_DAY) / STEPS_PER_DAY
    rush = np.exp(-((tod - 0.33) ** 2) / 0.002) + np.exp(-((tod - 0.73) ** 2) / 0.003)
    free = rng.uniform(55, 70, sizes.nodes)
    speed = free[None, :] - 25 * rush[:, None] * rng.uniform(0.3, 1.0, sizes.nodes)[None, :]
    columns = [speed + rng.normal(0, 2, (sizes.steps, sizes.nodes))]
    if features > 1:
        columns.append(300 + 500 * rush[:, None] + rng.normal(0, 30, (sizes.steps, sizes.nodes)))
    values = np.stack(columns, axis=-1).astype(np.float32)
    values[rng.random(values.shape[:2]) < 0.005] = 0.0
    return values, tod.astype(np.float32)


def adjacency(nodes: int) -> np.ndarray:
    """The real PEMS-BAY graph at 325 sensors when present; else a ring with a few chords."""
    if nodes == 325 and ADJ_PATH.is_file():
        from stgnn_launch.data.graph import load_graph

        return load_graph(ADJ_PATH)[0]
    eye = np.eye(nodes, dtype=np.float32)
    return eye + 0.6 * np.roll(eye, 1, axis=1) + 0.3 * np.roll(eye, 7, axis=1)


def our_series(values: np.ndarray, adj: np.ndarray):
    from stgnn_launch.data.series import Series, regular_timestamps

    steps, nodes, _ = values.shape
    return Series(torch.from_numpy(np.ascontiguousarray(values)), regular_timestamps(START, "5min", steps),
                  [str(i) for i in range(nodes)], adj)


def write_pgt_files(folder: Path, values: np.ndarray, tod: np.ndarray, adj: np.ndarray) -> None:
    """PGT's PEMS-BAY loader reads pems_node_values.npy (T x N x C: measured features, then time of day)
    and pems_adj_mat.npy from `raw_data_dir`, downloading and unzipping PEMS-BAY.zip only when those are
    absent. An empty PEMS-BAY.zip placeholder next to our .npy files makes it read our data, unchanged,
    with no download."""
    folder.mkdir(parents=True, exist_ok=True)
    tod_channel = np.broadcast_to(tod[:, None, None], values.shape[:2] + (1,))
    np.save(folder / "pems_node_values.npy", np.concatenate([values, tod_channel], axis=-1))
    np.save(folder / "pems_adj_mat.npy", adj.astype(np.float32))
    (folder / "PEMS-BAY.zip").touch()


# ---- PGT, as published -----------------------------------------------------------------------------
class PeerUnavailable(RuntimeError):
    """PGT could not be installed (no network, no package index)."""


def ensure_pgt() -> Path:
    """benchmarks/.peers with torch-geometric-temporal==0.56.2 (--no-deps) and dask; installed once."""
    if (PEERS / f"torch_geometric_temporal-{PGT_VERSION}.dist-info").is_dir():
        return PEERS
    staging = Path(tempfile.mkdtemp(prefix=".peers-", dir=HERE))
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--target", str(staging)]
    for args in (["--no-deps", f"torch-geometric-temporal=={PGT_VERSION}"], ["dask"]):
        done = subprocess.run(pip + args, capture_output=True, text=True)
        if done.returncode != 0:
            raise PeerUnavailable(f"pip install {' '.join(args)} failed: {done.stderr.strip()[-500:]}")
    if PEERS.exists():  # a half-finished earlier install
        import shutil

        shutil.rmtree(PEERS)
    staging.rename(PEERS)
    return PEERS


def pgt_modules() -> types.SimpleNamespace:
    """PGT's BatchedDCRNN and PemsBayDatasetLoader, imported from its own files.

    Its package __init__ imports every model, and one (EvolveGCNO) imports torch_sparse, which has no
    wheel for our torch. So its packages are registered as bare modules (no __init__ run): importing a
    submodule then runs that file and its own imports only. Nothing else is stubbed."""
    root = ensure_pgt()
    if str(root) not in sys.path:
        sys.path.append(str(root))  # last: our environment's own packages win over pip's copies
    package = root / "torch_geometric_temporal"
    for sub in ("", "nn", "nn/recurrent", "dataset"):
        name = ".".join(["torch_geometric_temporal", *filter(None, sub.split("/"))])
        if name not in sys.modules:
            module = types.ModuleType(name)
            module.__path__ = [str(package / sub)]
            sys.modules[name] = module
    dcrnn = importlib.import_module("torch_geometric_temporal.nn.recurrent.dcrnn")
    pems_bay = importlib.import_module("torch_geometric_temporal.dataset.pems_bay")
    signal = importlib.import_module("torch_geometric_temporal.signal")
    return types.SimpleNamespace(BatchedDCRNN=dcrnn.BatchedDCRNN, PemsBayDatasetLoader=pems_bay.PemsBayDatasetLoader,
                                 temporal_signal_split=signal.temporal_signal_split)


def pgt_index_loaders(pgt: types.SimpleNamespace, folder: Path, batch: int) -> tuple:
    """PGT-I's published single-GPU call: loader(index=True).get_index_dataset(batch_size=..., shuffle)."""
    loader = pgt.PemsBayDatasetLoader(raw_data_dir=str(folder), index=True)
    return loader.get_index_dataset(lags=12, batch_size=batch, shuffle=True)


def example_masked_mae(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """The loss of PGT-I's DCRNN example (its utils.masked_mae_loss, DCRNN's masked MAE), restated:
    the mean of |pred - true| * m / mean(m) with m = (true != 0), NaN terms counted as 0."""
    mask = (true != 0).float()
    loss = (pred - true).abs() * (mask / mask.mean())
    return torch.where(torch.isnan(loss), torch.zeros_like(loss), loss).mean()


# ---- measurements ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cost:
    wall_s: float
    cpu_s: float  # this process's user + system time
    minor_faults: int


def measured(fn: Callable[[], object]) -> Cost:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return Cost(wall, cpu, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)


def alternate(repeats: int, *runs: Callable[[], object]) -> list[Cost]:
    """Per run, the medians of wall time, CPU time and page faults over `repeats` runs taken in turn
    (a, b, c, a, b, c, ...), after one untimed warm-up each."""
    for run in runs:
        run()
    costs: list[list[Cost]] = [[] for _ in runs]
    for _ in range(repeats):
        for run, seen in zip(runs, costs):
            seen.append(measured(run))
    return [Cost(statistics.median(c.wall_s for c in seen), statistics.median(c.cpu_s for c in seen),
                 int(statistics.median(c.minor_faults for c in seen))) for seen in costs]


def timed(fn: Callable[[], object]) -> float:
    return measured(fn).wall_s


def memcpy_bytes_per_s(nbytes: int, pool_mib: int, repeats: int = 7) -> dict:
    """One-thread copy rate of `nbytes` (a batch's bytes), median of `repeats` runs of as many copies as
    fill `pool_mib`: memory to memory (each copy from and to fresh places of two pools larger than the
    caches, as a batch reads a large series and writes new pages), and cache-resident (the same source
    copied again and again into the same destination: what a small buffer reused in cache reaches)."""
    count = max(1, pool_mib * 2**20 // nbytes)
    elements = nbytes // 4
    src = torch.rand(count * elements)
    dst = torch.empty_like(src)
    dst.copy_(src)

    def from_memory() -> None:
        for i in range(count):
            dst[i * elements:(i + 1) * elements].copy_(src[i * elements:(i + 1) * elements])

    small_src, small_dst = src[:elements], dst[:elements]

    def in_cache() -> None:
        for _ in range(count):
            small_dst.copy_(small_src)

    memory, cache = alternate(repeats, from_memory, in_cache)
    return {"bytes": nbytes, "memory_to_memory_bytes_per_s": nbytes * count / memory.wall_s,
            "cache_resident_bytes_per_s": nbytes * count / cache.wall_s}


HOW_PGT = ("PGT-I: DataLoader over IndexDataset, B per-sample slices of its z-scored T x N x C array (x: W "
           "steps, y: H steps, all C channels), then default collate (torch.stack) into new x and y")
HOW_OURS = ("ours: take of batching=index on a CPU: x = one row gather of the W input rows per start from the "
            "T x N x (F+1) input table z-scored once at load; y = one row gather of the H raw target rows")
HOW_GATHER = ("ours, GPU run's host side (not a batch): one row gather of the W + H raw rows per start into a "
              "reused staging buffer; z-score, time of day and targets then run on the GPU")


def gather_comparison(pgt, sizes: Sizes, features: int, folder: Path) -> dict:
    """Equal work: each side's complete batch, dropped after use; and our GPU run's host-side gather."""
    values, tod = synthetic_readings(sizes, features)
    adj = adjacency(sizes.nodes)
    write_pgt_files(folder, values, tod, adj)
    pgt_train, *_, pgt_means, pgt_stds = pgt_index_loaders(pgt, folder, sizes.batch)
    series = our_series(values, adj)
    ours = build_our_source(series, "index")  # finish on this CPU: from the input table
    gpu_feed = build_our_source(series, "index", torch.device("meta"))  # as a GPU run's feed: raw rows
    del values, series

    n, b, k = ours.count("train"), sizes.batch, sizes.gather_batches
    if len(pgt_train.dataset) != n:
        raise AssertionError(f"training windows: PGT-I {len(pgt_train.dataset)}, ours {n}")
    if n < b * k:
        raise ValueError(f"{n} training windows: fewer than {k} batches of {b}")
    px, py = next(iter(pgt_train))
    ox, oy = ours.take("train", torch.arange(b))
    if px.shape[:3] != ox.shape[:3] or px.shape[-1] != ox.shape[-1]:
        raise AssertionError(f"batch shapes differ: PGT-I x {tuple(px.shape)}, ours x {tuple(ox.shape)}")
    # The same windows: each side's first training window, de-normalized by its own scaler, is the
    # same readings (PGT-I z-scores with whole-series statistics, we with the training range's).
    (pgt_x, pgt_y), (our_x, our_y) = pgt_train.dataset[0], ours.take("train", torch.arange(1))
    scaler = ours.prepared.scaler
    pgt_raw = pgt_x[..., :features] * pgt_stds[:features] + pgt_means[:features]
    torch.testing.assert_close(our_x[0, ..., :features] * scaler.std + scaler.mean, pgt_raw, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(our_y[0, ..., 0], pgt_y[..., 0] * pgt_stds[0] + pgt_means[0], rtol=1e-4, atol=1e-3)
    del px, py, ox, oy, pgt_x, pgt_y, our_x, our_y

    def run_pgt() -> None:
        batches = iter(pgt_train)  # a fresh shuffle, as each epoch of its example
        for _ in range(k):
            x, y = next(batches)  # used, then dropped when the next one comes: a training loop
        del x, y

    def run_ours() -> None:
        order = torch.randperm(n)  # a fresh shuffle, inside the timing as PGT-I's sampler's is
        for i in range(k):
            x, y = ours.take("train", order[i * b:(i + 1) * b])
        del x, y

    staging = tuple(torch.empty(shape, dtype=dtype) for shape, dtype in gpu_feed.part_shapes(b))

    def run_gpu_feed_gather() -> None:
        order = torch.randperm(n)
        for i in range(k):
            gpu_feed.gather("train", order[i * b:(i + 1) * b], staging)

    pgt_cost, ours_cost, gather_cost = alternate(sizes.repeats, run_pgt, run_ours, run_gpu_feed_gather)
    px, py = next(iter(pgt_train))
    ox, oy = ours.take("train", torch.arange(b))
    pgt_bytes, ours_bytes = px.nbytes + py.nbytes, ox.nbytes + oy.nbytes
    return {
        "features": features,
        "pgt": {**asdict(pgt_cost), "batch_bytes": pgt_bytes, "how": HOW_PGT},
        "ours": {**asdict(ours_cost), "batch_bytes": ours_bytes, "how": HOW_OURS},
        "gpu_feed_gather": {**asdict(gather_cost), "batch_bytes": sum(t.nbytes for t in staging), "how": HOW_GATHER},
        "batches_per_run": k,
        "pgt_memcpy": memcpy_bytes_per_s(pgt_bytes, sizes.memcpy_mib),
        "ours_memcpy": memcpy_bytes_per_s(ours_bytes, sizes.memcpy_mib),
        "pgt_batch_shapes": [list(px.shape), list(py.shape)],
        "ours_batch_shapes": [list(ox.shape), list(oy.shape)],
    }


def dcrnn_comparison(pgt, sizes: Sizes, folder: Path) -> dict:
    """Seconds per training step: PGT's BatchedDCRNN as its example trains it, and our dcrnn_pgti as
    stgnn-train does (Trainer.train_epoch), on one batch of each side's own loader (speed + tod)."""
    from stgnn_launch.models.registry import ModelSpec, build_model
    from stgnn_launch.train.metrics import masked_mae_loss

    values, tod = synthetic_readings(sizes, 1)
    adj = adjacency(sizes.nodes)
    write_pgt_files(folder, values, tod, adj)
    train, _, _, edges, edge_weights, means, stds = pgt_index_loaders(pgt, folder, sizes.batch)
    data = build_our_source(our_series(values, adj), "index")
    prepared = data.prepared
    del values

    torch.manual_seed(0)
    pgt_x, pgt_y = next(iter(train))
    pgt_model = pgt.BatchedDCRNN(2, 2, K=3)  # DCRNN(num_features, num_features, K=3), num_features = 2
    pgt_opt = torch.optim.Adam(pgt_model.parameters(), lr=0.001)

    def pgt_step() -> None:
        out = pgt_model(pgt_x, edges, edge_weights)
        loss = example_masked_mae(out * stds + means, pgt_y * stds + means)
        pgt_opt.zero_grad()
        loss.backward()
        pgt_opt.step()
        loss.item()

    spec = ModelSpec(num_nodes=sizes.nodes, in_features=prepared.in_features, out_features=1, window=12,
                     horizon=12, graph=adj, steps_per_day=STEPS_PER_DAY, tod_channel=prepared.tod_channel)
    ours = build_model("dcrnn_pgti", spec, {"K": 3, "hidden": 2})
    ours_opt = torch.optim.Adam(ours.parameters(), lr=0.001)
    ours_x, ours_y = data.take("train", torch.randperm(data.count("train"))[:sizes.batch])
    mean, std = prepared.scaler.mean[:1], prepared.scaler.std[:1]

    def ours_step() -> None:
        pred = ours(ours_x, targets=(ours_y - mean) / std) * std + mean
        loss = masked_mae_loss(pred, ours_y, prepared.null_value)
        ours_opt.zero_grad(set_to_none=True)
        loss.backward()
        ours_opt.step()
        loss.item()

    def repeat(step: Callable[[], None]) -> Callable[[], None]:
        return lambda: [step() for _ in range(sizes.dcrnn_steps)]

    pgt_cost, ours_cost = alternate(sizes.repeats, repeat(pgt_step), repeat(ours_step))
    steps = sizes.dcrnn_steps
    return {"pgt_step_s": pgt_cost.wall_s / steps, "ours_step_s": ours_cost.wall_s / steps,
            "pgt_step_cpu_s": pgt_cost.cpu_s / steps, "ours_step_cpu_s": ours_cost.cpu_s / steps,
            "threads": torch.get_num_threads(),
            "pgt_output_shape": list(pgt_model(pgt_x, edges, edge_weights).shape),
            "ours_output_shape": list(ours(ours_x).shape)}


# ---- peak memory of the standard paths, each in a fresh process ------------------------------------
def memory_child(which: str, folder: Path) -> None:
    """Runs alone in a fresh interpreter; prints its baseline and peak RSS as one JSON line."""
    def peak() -> int:
        """VmHWM, this process's peak RSS. Not getrusage's ru_maxrss: Linux carries that over from the
        forked parent across exec, so every child would report at least the parent's size."""
        status = Path("/proc/self/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) * 1024

    extra = {}
    if which == "pgt":
        # Its batched standard path, as its examples/recurrent/a3tgcn2_example.py trains: get_dataset (a
        # StaticGraphTemporalSignal whose windows are numpy views of the series), temporal_signal_split,
        # then np.array(features / targets) copies every window out into tensors for a TensorDataset.
        pgt = pgt_modules()
        baseline = peak()
        dataset = pgt.PemsBayDatasetLoader(raw_data_dir=str(folder)).get_dataset(num_timesteps_in=12, num_timesteps_out=12)
        extra["get_dataset_peak_rss_bytes"] = peak()
        parts = pgt.temporal_signal_split(dataset, train_ratio=0.8)
        loaders = [torch.utils.data.DataLoader(torch.utils.data.TensorDataset(
            torch.from_numpy(np.array(part.features)).type(torch.FloatTensor),
            torch.from_numpy(np.array(part.targets)).type(torch.FloatTensor)), batch_size=64, shuffle=True)
            for part in parts]
        windows = sum(len(loader.dataset) for loader in loaders)
        next(iter(loaders[0]))
    else:
        from stgnn_launch.data.series import Series  # noqa: F401 (the import cost counts in the baseline)

        baseline = peak()
        stored = np.load(folder / "pems_node_values.npy")
        adj = np.load(folder / "pems_adj_mat.npy")
        values = np.ascontiguousarray(stored[..., :-1])  # the measured features; tod comes from timestamps
        del stored
        ours = build_our_source(our_series(values, adj), "standard")
        del values
        ours.prepared = None  # the series: stgnn-train keeps only the windows in this mode
        windows = sum(ours.count(s) for s in ("train", "val", "test"))
        ours.take("train", torch.arange(4))
    print(json.dumps({"baseline_rss_bytes": baseline, "peak_rss_bytes": peak(), "windows": windows, **extra}))


def memory_comparison(sizes: Sizes, folder: Path) -> dict:
    values, tod = synthetic_readings(sizes, 1)
    write_pgt_files(folder, values, tod, adjacency(sizes.nodes))
    del values
    out = {}
    for which in ("pgt", "ours"):
        done = subprocess.run([sys.executable, __file__, "--memory-child", which, "--data", str(folder)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"memory child {which} failed:\n{done.stderr[-2000:]}")
        out[which] = json.loads(done.stdout.strip().splitlines()[-1])
    if out["pgt"]["windows"] != out["ours"]["windows"]:
        raise AssertionError(f"windows materialized: PGT {out['pgt']['windows']}, ours {out['ours']['windows']}")
    return out


# ---- report ----------------------------------------------------------------------------------------
def report(sizes: Sizes, gathers: list[dict], dcrnn: dict, memory: dict, quick: bool, extra: dict) -> dict:
    one, two = gathers

    def per_batch(g: dict, side: str, key: str) -> float:
        return g[side][key] / g["batches_per_run"]

    def fraction(g: dict, side: str, memcpy: str, rate: str) -> float:
        """The side's batch bytes per second as a fraction of memcpy's rate for the same bytes."""
        return g[side]["batch_bytes"] / per_batch(g, side, "wall_s") / g[memcpy][rate]

    mib = 2**20
    summary = {
        # the complete CPU batch on equal work, both sides dropping each batch: wall time, then CPU time
        "take_speedup_vs_pgt": one["pgt"]["wall_s"] / one["ours"]["wall_s"],
        "take_speedup_vs_pgt_2features": two["pgt"]["wall_s"] / two["ours"]["wall_s"],
        "take_cpu_speedup_vs_pgt": one["pgt"]["cpu_s"] / one["ours"]["cpu_s"],
        "take_cpu_speedup_vs_pgt_2features": two["pgt"]["cpu_s"] / two["ours"]["cpu_s"],
        "pgt_page_faults_per_batch": per_batch(one, "pgt", "minor_faults"),
        "ours_page_faults_per_batch": per_batch(one, "ours", "minor_faults"),
        "pgt_batch_bytes": one["pgt"]["batch_bytes"],
        "ours_batch_bytes": one["ours"]["batch_bytes"],
        "pgt_memcpy_fraction": fraction(one, "pgt", "pgt_memcpy", "memory_to_memory_bytes_per_s"),
        "ours_memcpy_fraction": fraction(one, "ours", "ours_memcpy", "memory_to_memory_bytes_per_s"),
        "pgt_memcpy_cache_resident_fraction": fraction(one, "pgt", "pgt_memcpy", "cache_resident_bytes_per_s"),
        "ours_memcpy_cache_resident_fraction": fraction(one, "ours", "ours_memcpy", "cache_resident_bytes_per_s"),
        # the host-side work of a GPU run (raw rows only), against PGT-I's complete batch: not equal work
        "gpu_feed_gather_speedup_vs_pgt": one["pgt"]["wall_s"] / one["gpu_feed_gather"]["wall_s"],
        "gpu_feed_gather_speedup_vs_pgt_2features": two["pgt"]["wall_s"] / two["gpu_feed_gather"]["wall_s"],
        # one training step, CPU time (the wall-time ratio beside it)
        "dcrnn_step_ratio_vs_pgt": dcrnn["ours_step_cpu_s"] / dcrnn["pgt_step_cpu_s"],
        "dcrnn_step_wall_ratio_vs_pgt": dcrnn["ours_step_s"] / dcrnn["pgt_step_s"],
        "standard_memory_ratio_vs_pgt": memory["ours"]["peak_rss_bytes"] / memory["pgt"]["peak_rss_bytes"],
        **{k: v for k, v in extra.items() if not isinstance(v, dict)},
        "gather": gathers,
        "dcrnn": dcrnn,
        "memory": memory,
        **{k: v for k, v in extra.items() if isinstance(v, dict)},
        "sizes": asdict(sizes),
        "quick": quick,
        "versions": {"torch": torch.__version__, "torch_geometric_temporal": PGT_VERSION,
                     "torch_geometric": importlib.import_module("torch_geometric").__version__},
        "real_graph": sizes.nodes == 325 and ADJ_PATH.is_file(),
    }
    print(f"data: {sizes.steps} steps x {sizes.nodes} sensors, batch {sizes.batch}, W = H = 12, "
          f"median of {sizes.repeats} alternating runs; both sides drop each batch")
    print(f"  {HOW_PGT}\n  {HOW_OURS}\n  {HOW_GATHER}")
    print(f"{'per batch, 1 thread':48}{'PGT-I':>12}{'ours':>12}{'PGT/ours':>10}")
    for g in gathers:
        f = g["features"]
        for key, unit, scale in (("wall_s", "ms wall", 1e3), ("cpu_s", "ms CPU", 1e3), ("minor_faults", "page faults", 1)):
            label = f"complete batch, {f} feature(s) + tod, {unit}"
            a, b = per_batch(g, "pgt", key) * scale, per_batch(g, "ours", key) * scale
            print(f"{label:48}{a:12.3f}{b:12.3f}{(a / b if b else math.inf):10.2f}")
        label = f"  bytes produced, {f} feature(s)"
        print(f"{label:48}{g['pgt']['batch_bytes']:12,}{g['ours']['batch_bytes']:12,}")
        label = "  GPU run's host gather (not a batch), ms wall"
        print(f"{label:48}{'':12}{per_batch(g, 'gpu_feed_gather', 'wall_s') * 1e3:12.3f}"
              f"{g['pgt']['wall_s'] / g['gpu_feed_gather']['wall_s']:10.2f}")
    print(f"{'fraction of memcpy of its bytes, memory->memory':48}{summary['pgt_memcpy_fraction']:12.2f}"
          f"{summary['ours_memcpy_fraction']:12.2f}")
    print(f"{'  (cache-resident memcpy, same bytes)':48}{summary['pgt_memcpy_cache_resident_fraction']:12.2f}"
          f"{summary['ours_memcpy_cache_resident_fraction']:12.2f}")
    print(f"{'DCRNN train step s CPU, ' + str(dcrnn['threads']) + ' threads':48}{dcrnn['pgt_step_cpu_s']:12.3f}"
          f"{dcrnn['ours_step_cpu_s']:12.3f}{1 / summary['dcrnn_step_ratio_vs_pgt']:10.2f}")
    print(f"{'standard path peak RSS MiB':48}{memory['pgt']['peak_rss_bytes'] / mib:12,.0f}"
          f"{memory['ours']['peak_rss_bytes'] / mib:12,.0f}{1 / summary['standard_memory_ratio_vs_pgt']:10.2f}")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes: a smoke test")
    parser.add_argument("--out", default=str(HERE / "peers.json"), help="where to write the JSON summary")
    parser.add_argument("--no-tsl", action="store_true", help="leave out the tsl comparison")
    parser.add_argument("--memory-child", choices=["pgt", "ours"], help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, Path(args.data))
        return

    sizes = QUICK if args.quick else FULL
    pgt = pgt_modules()
    default_threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="stgnn-peers-") as tmp:
        torch.set_num_threads(1)
        gathers = [gather_comparison(pgt, sizes, features, Path(tmp) / f"f{features}") for features in (1, 2)]
        torch.set_num_threads(default_threads)
        dcrnn = dcrnn_comparison(pgt, sizes, Path(tmp) / "dcrnn")
        memory = memory_comparison(sizes, Path(tmp) / "memory")
    extra = {} if args.no_tsl else tsl_summary(args.quick)
    summary = report(sizes, gathers, dcrnn, memory, args.quick, extra)
    ratios = [v for k, v in summary.items() if k.endswith(("_pgt", "_pgt_2features", "fraction", "_speedup", "_ratio"))]
    if not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in ratios):
        raise SystemExit(f"non-positive or non-finite result: {summary}")
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))


def tsl_summary(quick: bool) -> dict:
    """The tsl comparison (benchmarks/peers_tsl.py), or why it did not run."""
    try:
        sys.path.insert(0, str(HERE))
        import peers_tsl
    except ImportError as err:
        return {"tsl": {"skipped": f"benchmarks/peers_tsl.py: {err}"}}
    try:
        return peers_tsl.run(quick)
    except Exception as err:  # noqa: BLE001 (the PGT-I numbers above stand; say why tsl's are missing)
        return {"tsl": {"skipped": f"{type(err).__name__}: {err}"}}


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
