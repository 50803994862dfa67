"""The memory estimate of a Layout: before any data is read, how much host and device memory a rank needs
and a node needs, per term, and whether that fits.

`estimate_memory` is a pure function of the config, the dataset's shape (T, N, F), the machine, the
model's ActivationProfile (probe.py) and the Layout (layout.py: the same decisions the ranks take). The
peak of a rank is the larger of two phases: loading (series, a dense graph file while it becomes an edge
list, standard's windows being cut beside the series, a float32 copy for reduced precision) and training
(data, model + gradients + Adam, staging ring, one batch, its activations). On a CPU node everything is
host memory; with GPUs the model side is device memory, and the device side adds what no tensor shows:
the CUDA context with cuBLAS's workspaces, NCCL's buffers, DDP's gradient buckets, batches in flight, and
it is fitted against GPU_USABLE_SHARE of the card, not all of it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from stgnn_launch.config.schema import Config, LauncherName
from stgnn_launch.data.batching.modes import Term
from stgnn_launch.distributed.context import RankEnv
from stgnn_launch.planning.layout import Layout, covariate_count, data_geometry, decide_layout, prepare_spec
from stgnn_launch.planning.machine import Machine
from stgnn_launch.planning.probe import ActivationProfile

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
# autocast keeps most saved activations in bf16 (half of float32); measured on an H200 (benchmarks/gpu_check.sh):
# T-GCN's whole allocator peak 0.341 GiB with bf16 against 0.520 GiB without
BF16_ACTIVATION_SHARE = 0.6
CUDA_HOST_BYTES = 1024 * 2**20  # the CUDA runtime's host side, per rank with a GPU
CUDA_CONTEXT_BYTES = 600 * 2**20  # device memory the CUDA context and kernels take before any tensor
CUBLAS_WORKSPACE_BYTES = 32 * 2**20  # cuBLAS workspaces (":4096:8", per stream in use)
NCCL_BUFFER_BYTES = 512 * 2**20  # NCCL's communicator buffers per rank (4 MiB x channels x peers, rounded up)
GPU_USABLE_SHARE = 0.92  # fit against this share of a GPU: the caching allocator's fragmentation, other tenants
OPTIMIZER_COPIES = 4  # weights, gradients, Adam's two moments
_GiB = 2**30


@dataclass(frozen=True)
class MemoryEstimate:
    terms: list[Term]
    world: int
    local_world: int
    batch_size: int
    host_limit: int | None
    host_limit_source: str
    device_limit: int | None  # the usable share of one GPU
    host_rank_peak: int  # one rank's private bytes at its peak phase (excluding node-shared)
    host_node_peak: int
    device_rank_peak: int  # everything on the device: tensors, context, NCCL
    device_tensor_peak: int  # the part torch.cuda.max_memory_allocated measures
    dominant: str
    layout: Layout | None = None
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
            f", device {self.device_rank_peak / _GiB:.2f} GiB of {self.device_limit / _GiB:.2f} GiB usable per GPU"
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
    if cfg.launcher.name == LauncherName.slurm:
        return None, "unknown: set launcher.mem_gb"  # this login node says nothing of the compute nodes
    return host_memory_bytes(), "this machine"


def ranks_per_node(cfg: Config) -> int:
    return min(cfg.gpus, cfg.launcher.gpus_per_node) if cfg.launcher.name == LauncherName.slurm else cfg.gpus


def planned_layout(cfg: Config, shape: tuple[int, int, int], machine: Machine, world: int | None = None,
                   local_world: int | None = None) -> Layout:
    """The Layout of a node's first rank, decided by the same function the ranks call (decide_layout)."""
    world = world or cfg.gpus
    local = local_world or ranks_per_node(cfg)
    return decide_layout(cfg, RankEnv(rank=0, local_rank=0, world_size=world, local_world_size=local), machine,
                         lambda: shape)


# ---- the estimate -------------------------------------------------------------------------------
def _graph_and_baseline_terms(cfg: Config, layout: Layout, shape: tuple[int, int, int]) -> list[Term]:
    t, n, f = shape
    # Kept as an edge list (+ the models' sparse operators), assumed at most GRAPH_DEGREE edges per sensor; a
    # graph file (.pkl/.csv/.npy) is dense on disk and whole in memory while it is converted.
    terms = [Term("graph (edges, sparse operators)", "both", n * GRAPH_DEGREE * GRAPH_EDGE_BYTES)]
    if cfg.dataset.adj_path:
        terms.append(Term("dense graph file while converted", "load", n * n * 4))
    train_steps = int(t * cfg.dataset.train_ratio) + cfg.batching.window
    side_baseline = train_steps * n * f <= SIDE_BASELINE_READINGS  # run.py skips it beyond that
    if covariate_count(cfg) and side_baseline and cfg.model.name != "historical_average" and layout.shard != "time":
        # run.py fits the historical-average baseline on each rank: the z-scored training range + its mask
        terms.append(Term("historical-average fit", "load", train_steps * n * prepare_spec(cfg).out_features * 5))
    return terms


def _training_terms(cfg: Config, layout: Layout, shape: tuple[int, int, int], profile: ActivationProfile,
                    batch: int) -> list[Term]:
    """Model, optimiser, staging, batch, activations; on a GPU node the device side's runtime terms too."""
    t, n, f = shape
    b = cfg.batching
    w, h, c = b.window, b.horizon, covariate_count(cfg)
    f_out = prepare_spec(cfg).out_features
    cuda = layout.cuda
    dev = (lambda v: v) if cuda else (lambda v: 0)
    here = (lambda v: 0) if cuda else (lambda v: v)  # model-side bytes: host on CPU, device on GPU
    x_bytes, y_bytes = batch * w * n * (f + c) * 4, batch * h * n * f_out * 4
    params = profile.parameters(n)
    model = OPTIMIZER_COPIES * params * 4
    terms = [Term("model + gradients + Adam", "train", here(model), device_rank=dev(model))]
    staged = b.prefetch and not layout.data_on_gpu
    if staged:
        slot = layout.batching.staging_slot_bytes(data_geometry(cfg, shape, layout), batch)
        terms.append(Term(f"staging ring ({b.prefetch_depth + 1} batches)", "train", (b.prefetch_depth + 1) * slot))
        if cuda:  # each staged batch's device copy until the step that uses it is done
            terms.append(Term("batches in flight on the device", "train",
                              device_rank=b.prefetch_depth * slot))
    batch_bytes = 2 * (x_bytes + y_bytes)  # the finished batch and normalisation's temporaries
    terms.append(Term("one batch on the compute device", "train", here(batch_bytes), device_rank=dev(batch_bytes)))
    act = profile.activation_bytes(batch, n) * (GPU_ACTIVATION_OVERHEAD if cuda else CPU_ACTIVATION_OVERHEAD)
    if cuda and cfg.trainer.bf16:
        act *= BF16_ACTIVATION_SHARE
    label = "activations (checkpointed)" if cfg.trainer.activation_checkpointing else "activations of one batch"
    terms.append(Term(label, "train", here(int(act)), device_rank=dev(int(act))))
    if cuda:
        terms.append(Term("CUDA context, cuBLAS workspace", "both", device_rank=CUDA_CONTEXT_BYTES
                          + CUBLAS_WORKSPACE_BYTES, tensors=False))
        if layout.backend is not None:  # DDP: gradient buckets beside the gradients
            terms.append(Term("DDP gradient buckets", "train", device_rank=params * 4))
        if layout.backend == "nccl":
            terms.append(Term("NCCL buffers", "train", device_rank=NCCL_BUFFER_BYTES, tensors=False))
    return terms


def estimate_memory(cfg: Config, shape: tuple[int, int, int], machine: Machine, profile: ActivationProfile,
                    batch_size: int, layout: Layout | None = None) -> MemoryEstimate:
    """Per-term bytes per rank and per node, host and device, the verdict and the dominant term, for the
    Layout the ranks will take (a node's first rank, decided by decide_layout, unless one is given)."""
    layout = layout or planned_layout(cfg, shape, machine)
    local = layout.local_world
    terms = [Term("runtime (python, torch)", "both", RUNTIME_HOST_BYTES + (CUDA_HOST_BYTES if layout.cuda else 0))]
    terms += layout.batching.data_terms(data_geometry(cfg, shape, layout), layout)  # the series or the windows
    terms += _graph_and_baseline_terms(cfg, layout, shape)
    terms += _training_terms(cfg, layout, shape, profile, batch_size)

    def phase_total(phase: str, attr: str, only_tensors: bool = False) -> int:
        return sum(getattr(x, attr) for x in terms if x.phase in (phase, "both") and (x.tensors or not only_tensors))

    def node_total(phase: str) -> int:
        return phase_total(phase, "host_node") + local * phase_total(phase, "host_rank")

    peak_phase = max(("load", "train"), key=node_total)
    device_peak = max(phase_total("load", "device_rank"), phase_total("train", "device_rank"))
    device_tensors = max(phase_total("load", "device_rank", True), phase_total("train", "device_rank", True))
    limit, source = host_limit(cfg)
    device_limit = (int(GPU_USABLE_SHARE * machine.gpu_memory_bytes)
                    if layout.cuda and machine.gpu_memory_bytes else None)
    over_device = device_limit is not None and device_peak > device_limit
    weigh = "device_rank" if over_device else "host_node"
    in_phase = [x for x in terms if x.phase in (peak_phase, "both")] if not over_device else terms
    dominant = max(in_phase, key=lambda x: getattr(x, weigh) + (x.host_rank * local if weigh == "host_node" else 0))
    return MemoryEstimate(terms, layout.world, local, batch_size, limit, source, device_limit,
                          phase_total(peak_phase, "host_rank"), node_total(peak_phase), device_peak, device_tensors,
                          dominant.name, layout)
