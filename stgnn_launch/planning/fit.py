"""Does a run fit its node: the batch it will use (batching.batch_size=auto decided here, once per run), the
estimate for that batch, and the overrides that would make a run fit that does not.

`check_fits` is stgnn-train's refusal before any data is read; `settle_batch_size` writes the automatic
batch into the run's config.yaml, on the machine that launches (locally or for Slurm's nodes), so every
rank reads one number: ranks on GPUs of different memory never choose different batches and hang in DDP.
"""

from __future__ import annotations

from stgnn_launch.config.schema import BatchingMode, Config, LauncherName, SeriesDtype
from stgnn_launch.data.batching.modes import batching_mode
from stgnn_launch.errors import UserError
from stgnn_launch.planning.estimate import MemoryEstimate, estimate_memory, planned_layout, ranks_per_node
from stgnn_launch.planning.layout import Layout
from stgnn_launch.planning.machine import Machine
from stgnn_launch.planning.probe import ActivationProfile, in_out_features, probe_activations

EXIT_DOES_NOT_FIT = 3


def _batch_candidates(upto: int) -> list[int]:
    """Powers of two from `upto` down to 1 (largest first)."""
    sizes, size = [], 1
    while size <= upto:
        sizes.append(size)
        size *= 2
    return sizes[::-1]


def auto_batch_size(cfg: Config, shape: tuple[int, int, int], machine: Machine, profile: ActivationProfile,
                    layout: Layout | None = None) -> int:
    """`batching.batch_size=auto`: `batching.max_batch_size` when its estimate fits, else the largest power
    of two below it that fits; 1 when none does (the check then refuses with the table)."""
    layout = layout or planned_layout(cfg, shape, machine)
    cap = cfg.batching.max_batch_size
    for size in [cap] + [s for s in _batch_candidates(cap) if s < cap]:
        if estimate_memory(cfg, shape, machine, profile, size, layout).fits:
            return size
    return 1


def _planned_batch(cfg: Config, shape: tuple[int, int, int], machine: Machine, profile: ActivationProfile,
                   layout: Layout) -> int:
    """The per-rank batch a run of this config would use: a global batch's share, auto, or the number."""
    b = cfg.batching
    if b.global_batch_size:
        return b.global_batch_size // layout.world
    if b.batch_size == "auto":
        return auto_batch_size(cfg, shape, machine, profile, layout)
    return int(b.batch_size)


def estimate_for(cfg: Config, shape: tuple[int, int, int], machine: Machine, profile: ActivationProfile,
                 world: int | None = None, local_world: int | None = None) -> MemoryEstimate:
    """The estimate at the batch the run will use (auto, a global batch's share, or the given number), with
    suggestions when it does not fit."""
    world = world or cfg.gpus
    layout = planned_layout(cfg, shape, machine, world, local_world)
    b = cfg.batching
    batch = _planned_batch(cfg, shape, machine, profile, layout)
    note = "" if b.global_batch_size or b.batch_size != "auto" else \
        f"auto: the largest up to batching.max_batch_size={b.max_batch_size} that fits"
    estimate = estimate_memory(cfg, shape, machine, profile, batch, layout)
    extra = {"batch_note": note}
    if not estimate.fits:
        extra["suggestions"] = suggest(cfg, shape, machine, profile, world, layout.local_world)
    return MemoryEstimate(**{**estimate.__dict__, **extra})


def suggest(cfg: Config, shape: tuple[int, int, int], machine: Machine, profile: ActivationProfile,
            world: int, local: int) -> list[str]:
    """Overrides that would make it fit, each tried alone (after `batching=index` where standard is the
    problem), cheapest change first; the largest smaller batch that fits, last."""
    from omegaconf import OmegaConf

    from stgnn_launch.config.load import to_config

    def fits(overrides: tuple[str, ...], batch: int | None = None) -> bool:
        dotlist = [o.replace("batching=", "batching.mode=") for o in overrides]
        changed = to_config(OmegaConf.merge(OmegaConf.structured(cfg), OmegaConf.from_dotlist(dotlist)))
        layout = planned_layout(changed, shape, machine, world, local)
        size = batch or _planned_batch(changed, shape, machine, profile, layout)
        return estimate_memory(changed, shape, machine, profile, size, layout).fits

    b = cfg.batching
    materialised = batching_mode(b.mode).materialises_windows
    base: tuple[str, ...] = (f"batching={BatchingMode.index}",) if materialised else ()
    tries: list[tuple[str, ...]] = [base] if base else []
    if materialised and world > 1:
        tries.append((f"batching={BatchingMode.dist_index}",))
    if b.dtype == SeriesDtype.float32:
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


def target_machine(cfg: Config) -> Machine:
    """The machine the ranks run on: this one, or launcher=slurm's nodes (GPUs of launcher.gpu_mem_gb)."""
    if cfg.launcher.name == LauncherName.slurm:  # the compute nodes, not this login node
        gpus = 0 if cfg.launcher.cpu else cfg.launcher.gpus_per_node
        memory = int(cfg.launcher.gpu_mem_gb * 2**30) if cfg.launcher.gpu_mem_gb and gpus else None
        return Machine(cores=cfg.launcher.cpus_per_task or 1, gpus=gpus, gpu_memory_bytes=memory)
    return Machine.detect(cpu_only=bool(cfg.launcher.cpu))


def plan_memory(cfg: Config, shape: tuple[int, int, int] | None = None, machine: Machine | None = None,
                profile: ActivationProfile | None = None) -> MemoryEstimate:
    """The estimate for a composed config: the dataset's shape read without its values, the target machine,
    the model probed."""
    from stgnn_launch.data.datasets import dataset_shape

    shape = shape or dataset_shape(cfg.dataset)
    machine = machine or target_machine(cfg)
    profile = profile or probe_activations(cfg, *in_out_features(cfg, shape))
    return estimate_for(cfg, shape, machine, profile, cfg.gpus, ranks_per_node(cfg))


class DoesNotFit(UserError):
    exit_code = EXIT_DOES_NOT_FIT


def check_fits(cfg: Config) -> MemoryEstimate:
    """stgnn-train's check before any data is read: a run that cannot fit is refused with the table."""
    estimate = plan_memory(cfg)
    if not estimate.fits:
        raise DoesNotFit(f"memory: expected a run that fits the node, found one that does not\n{estimate.table()}")
    return estimate


def settle_batch_size(cfg: Config, estimate: MemoryEstimate | None = None) -> None:
    """`batching.batch_size=auto` decided once, where the run is launched (for this machine, or for Slurm's
    nodes): the number goes into the run's config.yaml and every rank reads it."""
    b = cfg.batching
    if b.batch_size != "auto" or b.global_batch_size:
        return
    b.batch_size = (estimate or plan_memory(cfg)).batch_size
    if b.batch_size < b.max_batch_size:
        print(f"batching.batch_size=auto: {b.batch_size} per rank, the largest up to {b.max_batch_size} that fits "
              "the node's memory (stgnn-plan shows the estimate)", flush=True)


def resolve_auto_batch(cfg: Config, shape: tuple[int, int, int] | None, machine: Machine, world: int) -> int:
    """A single process given `auto` (tools and tests that skip stgnn-train) decides for itself; several
    ranks must not, each on its own GPU's memory: the launcher writes the number into config.yaml."""
    if world > 1:
        raise UserError("batching.batch_size: expected a number in the run's config.yaml (stgnn-train decides "
                        f"auto once for every rank), found auto on a rank of {world}")
    if shape is None:
        from stgnn_launch.data.datasets import dataset_shape

        shape = dataset_shape(cfg.dataset)
    profile = probe_activations(cfg, *in_out_features(cfg, shape))
    return auto_batch_size(cfg, shape, machine, profile)
