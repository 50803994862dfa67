"""The memory planner: before any data is read, how much host and device memory a run needs per rank and
per node, whether that fits, which term dominates, and which override would make it fit.

`estimate_memory` is a pure function of the config, the dataset's shape (T, N, F), the machine and the
ranks; the one thing it cannot know from shapes alone is the model's activations, which it takes from an
`ActivationProfile`. `probe_activations` measures that profile for ANY registered model (custom ones
included) cheaply: one forward + backward of the real model class on a few tiny batches with a few nodes,
counting the bytes the autograd graph saves for the backward pass (torch's saved-tensor hooks, each
storage once, parameters excluded). The count is fitted as

    activations(B, N) = c_bn * B * N + (a + b * N + c * N^2)

from four probes ((2, n1), (2, n2), (2, n3), (4, n3)): per sample and node, plus whatever does not
depend on the batch (an adaptive N x N adjacency, say). With `trainer.activation_checkpointing`, a probe
also counts the steps `maybe_checkpoint` wrapped, and the peak becomes what is saved outside them, plus
their inputs, plus ONE step's insides (recomputed one at a time in the backward pass).

The peak of a rank is the larger of two phases: loading (series, a dense graph file while it becomes
an edge list, standard's windows being cut beside the series, a float32 copy for reduced precision) and
training (data, model + gradients + Adam, staging ring, one batch, its activations). On a CPU node
everything is host memory; with GPUs the model side is device memory.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode

from stgnn_launch.config.schema import Config
from stgnn_launch.data.graph import SparseGraph
from stgnn_launch.errors import UserError
from stgnn_launch.plan import DTYPES, Machine, prepare_spec

GRAPH_DEGREE = 64  # edges per sensor the planner allows for (road graphs: ~8 for METR-LA, DCRNN's kernel)
GRAPH_EDGE_BYTES = 20 + 4 * 16  # the edge list (int64 x 2 + float32) and 4 CSR operators (value + index)
SIDE_BASELINE_READINGS = 2**27  # run.py scores the historical average beside a model up to this many training readings

RUNTIME_HOST_BYTES = 384 * 2**20  # a training process before its data (peak of a 10-sensor T-GCN run: 380 MiB)
# Resident memory per byte of tensors alive at the step's peak: glibc keeps the freed blocks of a step's
# temporaries in its heap, so from the second step on the resident peak is about twice the live bytes
# (benchmarks/cpu_activation_overhead.py, torch 2.13 + glibc: a3tgcn 1.79, gwnet 1.85, tgcn 2.20,
# dcrnn 2.55; their mean); the CUDA caching allocator rounds less.
CPU_ACTIVATION_OVERHEAD = 2.1
GPU_ACTIVATION_OVERHEAD = 1.2
CUDA_HOST_BYTES = 1024 * 2**20  # the CUDA runtime's host side, per rank with a GPU
CUDA_CONTEXT_BYTES = 600 * 2**20  # device memory the CUDA context and kernels take before any tensor
OPTIMIZER_COPIES = 4  # weights, gradients, Adam's two moments
EXIT_DOES_NOT_FIT = 3
PROBE_NODES = (32, 96, 256)  # wide apart, so that an N^2 term (an adaptive adjacency) shows
PROBE_BATCHES = (2, 4)
_GiB = 2**30


@dataclass(frozen=True)
class ActivationProfile:
    """A model's saved-for-backward bytes and parameters as functions of the batch and the nodes."""

    per_sample_node: float  # bytes per (sample, node)
    fixed: tuple[float, float, float]  # a + b N + c N^2, independent of the batch
    params: tuple[float, float]  # parameter count a + b N

    def activation_bytes(self, batch: int, nodes: int) -> int:
        a, b, c = self.fixed
        return max(0, int(self.per_sample_node * batch * nodes + max(0.0, a + b * nodes + c * nodes * nodes)))

    def parameters(self, nodes: int) -> int:
        return max(0, int(self.params[0] + self.params[1] * nodes))


@dataclass(frozen=True)
class Term:
    name: str
    phase: str  # load | train | both
    host_rank: int = 0  # private host bytes of each rank
    host_node: int = 0  # host bytes shared by the node's ranks (counted once per node)
    device_rank: int = 0  # device bytes of each rank


@dataclass(frozen=True)
class MemoryEstimate:
    terms: list[Term]
    world: int
    local_world: int
    batch_size: int
    host_limit: int | None
    host_limit_source: str
    device_limit: int | None
    host_rank_peak: int  # one rank's private bytes at its peak phase (excluding node-shared)
    host_node_peak: int
    device_rank_peak: int
    dominant: str
    suggestions: list[str] = field(default_factory=list)
    batch_note: str = ""  # how the batch was chosen, when batching.batch_size=auto chose it

    @property
    def fits_host(self) -> bool:
        return self.host_limit is None or self.host_node_peak <= self.host_limit

    @property
    def fits_device(self) -> bool:
        return self.device_limit is None or self.device_rank_peak <= self.device_limit

    @property
    def fits(self) -> bool:
        return self.fits_host and self.fits_device

    def table(self) -> str:
        gib = lambda v: f"{v / _GiB:9.2f}" if v else f"{'-':>9}"  # noqa: E731
        lines = [f"memory plan: {self.world} rank(s), {self.local_world} per node, batch {self.batch_size} per rank"
                 + (f" ({self.batch_note})" if self.batch_note else ""),
                 f"{'term':<34}{'phase':>6} {'host/rank':>9} {'host/node':>9} {'dev/rank':>9}  (GiB)"]
        for t in self.terms:
            node = t.host_node + t.host_rank * self.local_world
            lines.append(f"{t.name:<34}{t.phase:>6} {gib(t.host_rank)} {gib(node)} {gib(t.device_rank)}")
        lines.append(f"{'peak':<34}{'':>6} {gib(self.host_rank_peak)} {gib(self.host_node_peak)} "
                     f"{gib(self.device_rank_peak)}")
        host = (f"host {self.host_node_peak / _GiB:.2f} GiB of {self.host_limit / _GiB:.2f} GiB ({self.host_limit_source})"
                if self.host_limit else "host limit unknown")
        device = "" if self.device_limit is None else \
            f", device {self.device_rank_peak / _GiB:.2f} GiB of {self.device_limit / _GiB:.2f} GiB per GPU"
        lines.append(f"{'fits' if self.fits else 'DOES NOT FIT'}: {host}{device}; dominant term: {self.dominant}")
        for s in self.suggestions:
            lines.append(f"  would fit with: {s}")
        return "\n".join(lines)


# ---- the machine's limits -----------------------------------------------------------------------
def host_memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def host_limit(cfg: Config) -> tuple[int | None, str]:
    if cfg.launcher.mem_gb:
        return cfg.launcher.mem_gb * _GiB, "launcher.mem_gb"
    if cfg.launcher.name == "slurm":
        return None, "unknown: set launcher.mem_gb"  # this login node says nothing of the compute nodes
    return host_memory_bytes(), "this machine"


def ranks_per_node(cfg: Config) -> int:
    return min(cfg.gpus, cfg.launcher.gpus_per_node) if cfg.launcher.name == "slurm" else cfg.gpus


# ---- the estimate -------------------------------------------------------------------------------
def covariate_count(cfg: Config) -> int:
    """At most: time of day unless disabled (a daily or longer step has none), day of week if asked."""
    return int(cfg.dataset.covariates != "none") + int(cfg.dataset.day_of_week)


def estimate_memory(cfg: Config, shape: tuple[int, int, int], machine: Machine, profile: ActivationProfile,
                    batch_size: int | None = None, world: int | None = None,
                    local_world: int | None = None) -> MemoryEstimate:
    """Per-term bytes per rank and per node, host and device, the verdict, the dominant term and the
    overrides that would make it fit. Pure: everything it needs is an argument."""
    t, n, f = shape
    b = cfg.batching
    world = world or cfg.gpus
    local = local_world or ranks_per_node(cfg)
    note = ""
    if batch_size:
        batch = batch_size
    elif b.global_batch_size:
        batch = b.global_batch_size // world
    elif b.batch_size == "auto":
        batch = auto_batch_size(cfg, shape, machine, profile, world, local)
        note = f"auto: the largest up to batching.max_batch_size={b.max_batch_size} that fits"
    else:
        batch = int(b.batch_size)
    w, h = b.window, b.horizon
    c = covariate_count(cfg)
    f_out = prepare_spec(cfg).out_features
    itemsize = DTYPES[b.dtype].itemsize
    cuda = machine.gpus > 0 and not cfg.launcher.cpu
    data_on_gpu = cuda and b.device == "gpu"
    dev = (lambda v: v) if cuda else (lambda v: 0)
    here = (lambda v: 0) if cuda else (lambda v: v)  # model-side bytes: host on CPU, device on GPU

    windows = max(0, (t - w - h) // b.stride + 1)
    x_bytes = batch * w * n * (f + c) * 4
    y_bytes = batch * h * n * f_out * 4
    series32 = t * n * f * 4
    terms: list[Term] = [Term("runtime (python, torch)", "both", RUNTIME_HOST_BYTES + (CUDA_HOST_BYTES if cuda else 0),
                              device_rank=CUDA_CONTEXT_BYTES if cuda else 0)]
    covariates = t * c * 4
    shared = b.mode == "dist_index" and b.shard == "index" and world > 1 and local > 1 and not data_on_gpu
    if b.mode == "standard":
        window_bytes = windows * (w * n * (f + c) + h * n * f_out) * 4
        terms += [Term("materialised windows (all splits)", "both", 0 if data_on_gpu else window_bytes,
                       device_rank=window_bytes if data_on_gpu else 0),
                  Term("series while windows are cut", "load", series32 + covariates),
                  Term("window chunk being cut", "load", 2 * 1024 * (w * n * (f + c) + h * n * f_out) * 4
                       + 1024 * (w + h) * n * f * 4)]
    else:
        steps = t
        if b.mode == "dist_index" and b.shard == "time" and world > 1:
            steps = math.ceil(t / world) + w + h - 1
        series = steps * n * f * itemsize
        if data_on_gpu:
            terms.append(Term("resident series (one per GPU)", "both", device_rank=series))
        elif shared:
            terms.append(Term("resident series (node-shared)", "both", host_node=series))
        else:
            terms.append(Term("resident series", "both", series))
        if itemsize != 4:  # read as float32, then cast: both exist for a moment
            terms.append(Term("float32 read before the cast", "load", steps * n * f * 4))
        terms.append(Term("covariates table", "both", covariates))
    # Kept as an edge list (+ the models' sparse operators), assumed at most GRAPH_DEGREE edges per sensor; a
    # graph file (.pkl/.csv/.npy) is dense on disk and whole in memory while it is converted.
    terms.append(Term("graph (edges, sparse operators)", "both", n * GRAPH_DEGREE * GRAPH_EDGE_BYTES))
    if cfg.dataset.adj_path:
        terms.append(Term("dense graph file while converted", "load", n * n * 4))
    train_steps = int(t * cfg.dataset.train_ratio) + w
    side_baseline = train_steps * n * f <= SIDE_BASELINE_READINGS  # run.py skips it beyond that
    if c and side_baseline and cfg.model.name != "historical_average" and not (
            b.mode == "dist_index" and b.shard == "time"):
        # run.py fits the historical-average baseline on each rank: the z-scored training range + its mask
        terms.append(Term("historical-average fit", "load", train_steps * n * f_out * 5))

    params = profile.parameters(n)
    model = OPTIMIZER_COPIES * params * 4
    terms.append(Term("model + gradients + Adam", "train", here(model), device_rank=dev(model)))
    if b.prefetch and not data_on_gpu:
        slot = (x_bytes + y_bytes) if b.mode == "standard" else batch * ((w + h) * n * f * itemsize + 8)
        terms.append(Term(f"staging ring ({b.prefetch_depth + 1} batches)", "train", (b.prefetch_depth + 1) * slot))
    batch_bytes = 2 * (x_bytes + y_bytes)  # the finished batch and normalisation's temporaries
    terms.append(Term("one batch on the compute device", "train", here(batch_bytes), device_rank=dev(batch_bytes)))
    act = int(profile.activation_bytes(batch, n) * (GPU_ACTIVATION_OVERHEAD if cuda else CPU_ACTIVATION_OVERHEAD))
    label = "activations (checkpointed)" if cfg.trainer.activation_checkpointing else "activations of one batch"
    terms.append(Term(label, "train", here(act), device_rank=dev(act)))

    def phase_total(phase: str, attr: str) -> int:
        return sum(getattr(x, attr) for x in terms if x.phase in (phase, "both"))

    def node_total(phase: str) -> int:
        return phase_total(phase, "host_node") + local * phase_total(phase, "host_rank")

    peak_phase = max(("load", "train"), key=node_total)
    host_rank_peak = phase_total(peak_phase, "host_rank")
    host_node_peak = node_total(peak_phase)
    device_peak = max(phase_total("load", "device_rank"), phase_total("train", "device_rank"))
    limit, source = host_limit(cfg)
    device_limit = machine.gpu_memory_bytes if cuda else None

    over_device = device_limit is not None and device_peak > device_limit
    weigh = "device_rank" if over_device else "host_node"
    in_phase = [x for x in terms if x.phase in (peak_phase, "both")] if not over_device else terms
    dominant = max(in_phase, key=lambda x: getattr(x, weigh) + (x.host_rank * local if weigh == "host_node" else 0))
    estimate = MemoryEstimate(terms, world, local, batch, limit, source, device_limit, host_rank_peak,
                              host_node_peak, device_peak, dominant.name, batch_note=note)
    if estimate.fits or batch_size is not None:  # an explicit batch: auto's search, or suggest's own tries
        return estimate
    return MemoryEstimate(**{**estimate.__dict__,
                             "suggestions": suggest(cfg, shape, machine, profile, world, local)})


def suggest(cfg: Config, shape: tuple[int, int, int], machine: Machine, profile: ActivationProfile,
            world: int, local: int) -> list[str]:
    """Overrides that would make it fit, each tried alone (after `batching=index` where standard is the
    problem), cheapest change first; the largest smaller batch that fits, last."""
    from omegaconf import OmegaConf

    from stgnn_launch.config.load import to_config

    def fits(overrides: tuple[str, ...], batch: int | None = None) -> bool:
        dotlist = [o.replace("batching=", "batching.mode=") for o in overrides]
        changed = to_config(OmegaConf.merge(OmegaConf.structured(cfg), OmegaConf.from_dotlist(dotlist)))
        return estimate_memory(changed, shape, machine, profile, batch_size=batch, world=world,
                               local_world=local).fits

    b = cfg.batching
    base: tuple[str, ...] = ("batching=index",) if b.mode == "standard" else ()
    tries: list[tuple[str, ...]] = [base] if base else []
    if b.mode == "standard" and world > 1:
        tries.append(("batching=dist_index",))
    if b.dtype == "float32":
        tries.append(base + ("batching.dtype=bfloat16",))
    if not cfg.trainer.activation_checkpointing:
        tries.append(base + ("trainer.activation_checkpointing=true",))
    out = [" ".join(t) for t in tries if fits(t)]
    current = int(b.batch_size) if b.batch_size != "auto" else 1  # auto tried every batch down to 1
    for size in _batch_candidates(current - 1):
        if fits(base, size):
            out.append(" ".join(base + (f"batching.batch_size={size}",)))
            break
    if not out:
        out.append("a node with more memory, or more nodes (launcher=slurm) with batching=dist_index "
                   "batching.shard=time")
    return out


def _batch_candidates(upto: int) -> list[int]:
    """Powers of two from `upto` down to 1 (largest first)."""
    sizes, size = [], 1
    while size <= upto:
        sizes.append(size)
        size *= 2
    return sizes[::-1]


def auto_batch_size(cfg: Config, shape: tuple[int, int, int], machine: Machine, profile: ActivationProfile,
                    world: int | None = None, local_world: int | None = None) -> int:
    """`batching.batch_size=auto`: `batching.max_batch_size` when its estimate fits, else the largest power
    of two below it that fits; 1 when none does (the check then refuses with the table)."""
    cap = cfg.batching.max_batch_size
    world = world or cfg.gpus
    for size in [cap] + [s for s in _batch_candidates(cap) if s < cap]:
        if estimate_memory(cfg, shape, machine, profile, batch_size=size, world=world, local_world=local_world).fits:
            return size
    return 1


# ---- the activation probe -----------------------------------------------------------------------
def _probe_graph(n: int, degree: int = 8) -> SparseGraph:
    """A directed ring with `degree` neighbours ahead, weights in (0, 1], diagonal 1 (DCRNN's kernel style)."""
    ahead = np.arange(min(degree, n - 1) + 1)
    rows = np.repeat(np.arange(n), ahead.size)
    cols = (rows + np.tile(ahead, n)) % n
    order = np.lexsort((cols, rows))  # row-major, as a dense matrix's nonzeros
    return SparseGraph(rows[order], cols[order], np.exp(-0.1 * np.tile(ahead, n))[order], n)


class _LiveBytes(TorchDispatchMode):
    """The peak of bytes held by tensors created inside the mode: every op's outputs are recorded by
    storage (weakly), and after each op the storages still alive are summed. Storages that autograd
    keeps for the backward pass stay alive, so this sees the forward's saved activations, the
    backward's gradients and every op's temporaries, as the allocator would."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.layout == torch.strided:
                storage = t.untyped_storage()
                if storage.data_ptr() not in self.live:
                    self.live[storage.data_ptr()] = (StorageWeakRef(storage), storage.nbytes())
        self.live = {k: v for k, v in self.live.items() if not v[0].expired()}
        self.peak = max(self.peak, sum(n for _, n in self.live.values()))
        return out


def _step_peak(cfg: Config, in_features: int, out_features: int, batch: int, nodes: int) -> tuple[int, int]:
    """(peak bytes of one training step's tensors, parameters) on a tiny random batch."""
    from stgnn_launch.models.checkpointing import enable_activation_checkpointing
    from stgnn_launch.models.registry import ModelSpec, build_model

    b = cfg.batching
    spec = ModelSpec(num_nodes=nodes, in_features=in_features, out_features=out_features, window=b.window,
                     horizon=b.horizon, graph=_probe_graph(nodes), steps_per_day=288,
                     tod_channel=out_features if in_features > out_features else None)
    model = build_model(cfg.model.name, spec, dict(cfg.model.params))
    params = sum(p.numel() for p in model.parameters())
    if not getattr(model, "trainable", True):
        return 0, params
    enable_activation_checkpointing(model, cfg.trainer.activation_checkpointing)
    model.train()
    x = torch.rand(batch, b.window, nodes, in_features)
    y = torch.rand(batch, b.horizon, nodes, out_features)
    tracker = _LiveBytes()
    with tracker:
        loss = (model(x, targets=y).float() - y).abs().mean()
        loss.backward()
    return tracker.peak, params


def probe_activations(cfg: Config, in_features: int, out_features: int) -> ActivationProfile:
    """The model's ActivationProfile from a few tiny training steps (seconds; the random state is kept)."""
    points = [(PROBE_BATCHES[0], n) for n in PROBE_NODES] + [(PROBE_BATCHES[1], PROBE_NODES[-1])]
    measured: dict[tuple[int, int], float] = {}
    params: dict[int, int] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: more threads would only contend
    try:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            for batch, nodes in points:
                peak, params[nodes] = _step_peak(cfg, in_features, out_features, batch, nodes)
                measured[(batch, nodes)] = float(peak)
    finally:
        torch.set_num_threads(threads)
    b0, b1 = PROBE_BATCHES
    n0 = PROBE_NODES[-1]  # the per-sample slope where nodes weigh most
    per = (measured[(b1, n0)] - measured[(b0, n0)]) / ((b1 - b0) * n0)
    fixed = [measured[(b0, n)] - per * b0 * n for n in PROBE_NODES]
    nodes = np.array(PROBE_NODES, dtype=float)
    c, b, a = np.polyfit(nodes, np.array(fixed), 2)
    if not c * nodes[-1] ** 2 > 0.25 * abs(fixed[-1]):  # no real N^2 term: the peak's own jitter, fit a line
        c, (b, a) = 0.0, np.polyfit(nodes, np.array(fixed), 1)
    lin = np.polyfit(np.array(PROBE_NODES, dtype=float), np.array([params[n] for n in PROBE_NODES], float), 1)
    return ActivationProfile(per_sample_node=max(0.0, per), fixed=(float(a), float(b), float(c)),
                             params=(float(lin[1]), float(lin[0])))


def in_out_features(cfg: Config, shape: tuple[int, int, int]) -> tuple[int, int]:
    return shape[2] + covariate_count(cfg), prepare_spec(cfg).out_features


def plan_memory(cfg: Config, shape: tuple[int, int, int] | None = None, machine: Machine | None = None,
                profile: ActivationProfile | None = None) -> MemoryEstimate:
    """The estimate for a composed config: the dataset's shape read without its values, this machine
    (or launcher=slurm's nodes: GPUs of unknown memory), the model probed."""
    from stgnn_launch.data.datasets import dataset_shape

    shape = shape or dataset_shape(cfg.dataset)
    machine = machine or target_machine(cfg)
    profile = profile or probe_activations(cfg, *in_out_features(cfg, shape))
    return estimate_memory(cfg, shape, machine, profile)


def target_machine(cfg: Config) -> Machine:
    if cfg.launcher.name == "slurm":  # the compute nodes, not this login node
        return Machine(cores=cfg.launcher.cpus_per_task or 1, gpus=0 if cfg.launcher.cpu else cfg.launcher.gpus_per_node)
    return Machine.detect(cpu_only=bool(cfg.launcher.cpu))


class DoesNotFit(UserError):
    exit_code = EXIT_DOES_NOT_FIT


def check_fits(cfg: Config) -> MemoryEstimate:
    """stgnn-train's check before any data is read: a run that cannot fit is refused with the table."""
    estimate = plan_memory(cfg)
    if not estimate.fits:
        raise DoesNotFit(f"memory: expected a run that fits the node, found one that does not\n{estimate.table()}")
    return estimate


def settle_batch_size(cfg: Config, estimate: MemoryEstimate | None = None) -> None:
    """`batching.batch_size=auto` decided once, where the run is launched on this machine (launcher=local):
    the number goes into the run's config.yaml and every rank reads it instead of probing the model again.
    On Slurm the ranks decide, on the nodes whose memory counts (`resolve_auto_batch`)."""
    b = cfg.batching
    if b.batch_size != "auto" or b.global_batch_size or cfg.launcher.name != "local":
        return
    b.batch_size = (estimate or plan_memory(cfg)).batch_size
    if b.batch_size < b.max_batch_size:
        print(f"batching.batch_size=auto: {b.batch_size} per rank, the largest up to {b.max_batch_size} that fits "
              "this node's memory (stgnn-plan shows the estimate)", flush=True)


def resolve_auto_batch(cfg: Config, shape: tuple[int, int, int] | None, machine: Machine, env) -> int:
    """make_plan's `batching.batch_size=auto` on a rank: the model probed, the largest batch that fits."""
    if shape is None:
        from stgnn_launch.data.datasets import dataset_shape

        shape = dataset_shape(cfg.dataset)
    profile = probe_activations(cfg, *in_out_features(cfg, shape))
    return auto_batch_size(cfg, shape, machine, profile, world=env.world_size, local_world=env.local_world_size)
