"""Typed configuration: one keyword-only dataclass per config group, validated in `__post_init__`.

Hydra composes `conf/` against these schemas (registered in its ConfigStore), so a misspelt key or a
value of the wrong type is refused by OmegaConf, and a value out of range by the checks below; either
way the message names the key, what was expected and what was found.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Optional, TypeVar

from stgnn_launch.errors import UserError
from stgnn_launch.errors import expect as _check  # one message shape: "<key>: expected ..., found ..."


# ---- the choices: each allowed value written once ----------------------------------------------------
# StrEnums: a member is its string (`cfg.batching.mode == "index"`, f-strings, JSON and config.yaml all see
# the plain value), and OmegaConf refuses any other value when it composes (by name: names = values).
class SplitProtocol(StrEnum):
    dcrnn = "dcrnn"  # by sample: train / test / the rest is validation
    tgcn = "tgcn"  # by time step, windows inside each part


class Covariates(StrEnum):
    auto = "auto"  # time of day for sub-daily steps only
    time_of_day = "time_of_day"
    none = "none"


class AxisOrder(StrEnum):
    """Axes of an .npy/.npz array: T time, N sensors, F features."""

    TN = "TN"
    NT = "NT"
    TNF = "TNF"
    NTF = "NTF"
    NFT = "NFT"
    TFN = "TFN"


class BatchingMode(StrEnum):
    standard = "standard"  # every window materialised up front (the field's pipeline, the memory baseline)
    index = "index"  # the series once, each batch one gather from its window starts
    dist_index = "dist_index"  # index over the node's one shared copy, ranks taking disjoint shards


class DataDevice(StrEnum):
    cpu = "cpu"  # host memory, one copy per node
    gpu = "gpu"  # one copy per GPU
    auto = "auto"  # gpu when the estimate fits the GPU's memory


class SeriesDtype(StrEnum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class Shard(StrEnum):
    index = "index"  # every rank maps the node's copy and takes a shard of the window starts
    time = "time"  # each rank loads only its time range


class LrScaling(StrEnum):
    none = "none"
    linear = "linear"
    sqrt = "sqrt"


class LauncherName(StrEnum):
    local = "local"  # this machine (torchrun when gpus > 1)
    slurm = "slurm"  # submitit


class ModelBase(StrEnum):
    """What a trainable model learns a correction to (models/residual.py)."""

    auto = "auto"  # a blend of persistence, the historical average (sub-daily steps) and the mean, fitted on train
    historical_average = "historical_average"
    persistence = "persistence"
    none = "none"  # the bare network, as published protocols train it (their presets set it)


class Backend(StrEnum):
    auto = "auto"  # nccl on GPUs, gloo on CPUs
    gloo = "gloo"  # on GPUs too: ranks may then share a GPU


Choice = TypeVar("Choice", bound=StrEnum)


def one_of(kind: type[StrEnum]) -> str:
    return "one of " + ", ".join(kind)


def choice(kind: type[Choice], value: object, key: str) -> Choice:
    """`value` as a member of `kind` (OmegaConf hands one already; Python code may pass its string), or the
    one-line refusal naming the key, the allowed values and what was found."""
    try:
        return kind(value)
    except ValueError:
        raise UserError(f"{key}: expected {one_of(kind)}, found {value!r}") from None


@dataclass(kw_only=True)
class DatasetConfig:
    """Where the series and its graph come from, and the facts that belong to the data."""

    name: str = "synthetic"
    path: Optional[str] = None  # series file (.h5 pandas/native, .csv, .npy, .npz); None for synthetic
    key: Optional[str] = None  # HDF5 key of a pandas file (e.g. df, speed); None = the only one
    adj_path: Optional[str] = None  # graph file (.pkl DCRNN, .csv/.npy dense); None = synthetic's own
    start: str = "2012-03-01T00:00"  # first timestamp, for files without timestamps (csv, npy)
    freq: str = "5min"  # step, for files without timestamps
    axis_order: AxisOrder = AxisOrder.TN
    num_nodes: int = 80  # synthetic only
    num_steps: int = 4032  # synthetic only (two weeks of 5-minute steps)
    seed: int = 0  # synthetic only
    cache_dir: Optional[str] = None  # where generated/converted files go; None = ~/.cache/stgnn-launch
    null_value: Optional[float] = 0.0  # readings equal to this are missing (scaler, metrics); null: none is
    covariates: Covariates = Covariates.auto
    train_ratio: float = 0.7  # dcrnn split only: share of the windows for training
    test_ratio: float = 0.2  # share of the windows (dcrnn) or of the time steps (tgcn) at the end for testing
    day_of_week: bool = False  # add a day-of-week covariate after time-of-day
    split: SplitProtocol = SplitProtocol.dcrnn
    val_ratio_of_train: float = 0.2  # tgcn split only: the last share of the training part's steps = validation

    def __post_init__(self) -> None:
        _check(self.num_nodes >= 2, "dataset.num_nodes", "at least 2", self.num_nodes)
        _check(self.num_steps >= 2, "dataset.num_steps", "at least 2", self.num_steps)
        _check(0 < self.train_ratio < 1, "dataset.train_ratio", "a fraction in (0, 1)", self.train_ratio)
        _check(0 < self.test_ratio < 1, "dataset.test_ratio", "a fraction in (0, 1)", self.test_ratio)
        self.split = choice(SplitProtocol, self.split, "dataset.split")
        if self.split == "dcrnn":
            _check(self.train_ratio + self.test_ratio < 1, "dataset.train_ratio + dataset.test_ratio",
                   "less than 1 (the rest is validation)", self.train_ratio + self.test_ratio)
        _check(0 < self.val_ratio_of_train < 1, "dataset.val_ratio_of_train", "a fraction in (0, 1)",
               self.val_ratio_of_train)
        self.covariates = choice(Covariates, self.covariates, "dataset.covariates")
        self.axis_order = choice(AxisOrder, self.axis_order, "dataset.axis_order")
        if self.name != "synthetic":
            _check(self.path is not None, "dataset.path",
                   f"the series file of dataset {self.name!r} (set dataset.path=...)", self.path)
        from stgnn_launch.config.paths import resolve_data_path  # relative: cwd, $STGNN_DATA, the checkout

        self.path, self.adj_path = resolve_data_path(self.path), resolve_data_path(self.adj_path)


@dataclass(kw_only=True)
class ModelConfig:
    """`name` picks the model from the registry; every other key is passed to its constructor.

    `target` (model=custom) and `cell` (model=pyg_recurrent) are classes by import path. The trainer
    hands the constructor `params` alone, so they travel there too, under Hydra's reserved names
    `_target_` / `_cell_` (`model.params._target_=...` is accepted as a spelling of `model.target`).
    """

    name: str = "tgcn"
    params: dict = field(default_factory=dict)
    target: Optional[str] = None  # model=custom: "pkg.module:Class", "pkg.module.Class" or "path/file.py:Class"
    cell: Optional[str] = None  # model=pyg_recurrent: a PyG-style recurrent cell class, same spellings
    base: ModelBase = ModelBase.auto  # a trainable model learns a gated correction to this fitted baseline

    def __post_init__(self) -> None:
        self.base = choice(ModelBase, self.base, "model.base")
        for key, owner in (("target", "custom"), ("cell", "pyg_recurrent")):
            reserved = f"_{key}_"
            path = getattr(self, key) or self.params.get(reserved)
            if self.name == owner:
                _check(isinstance(path, str) and bool(path.strip()), f"model.{key}",
                       f"an import path module:Class or file.py:Class for model={owner}", path)
                setattr(self, key, path)
                self.params = {**self.params, reserved: path}
            else:
                _check(path is None, f"model.{key}", f"unset unless model={owner} (model={self.name})", path)


@dataclass(kw_only=True)
class BatchingConfig:
    mode: BatchingMode = BatchingMode.index
    window: int = 12
    horizon: int = 12
    stride: int = 1  # steps between consecutive window starts
    batch_size: Any = "auto"  # per rank: a positive integer (refused if it cannot fit), or auto:
    #                           max_batch_size when it fits, else the largest power of two below that fits
    max_batch_size: int = 64  # auto's ceiling (the field's usual batch)
    eval_batch_size: Optional[int] = None  # None = batch_size
    global_batch_size: Optional[int] = None  # fixed over world sizes: batch_size = this / ranks (a sweep
    #                                          over GPU counts then compares like with like)
    shuffle: bool = True
    device: DataDevice = DataDevice.auto  # where the series (or standard's windows) lives
    dtype: SeriesDtype = SeriesDtype.float32  # resident series precision (inputs cast to float32 per batch)
    shard: Shard = Shard.index  # dist_index only
    prefetch: bool = True  # gather batch k+1 in a background thread while step k runs
    prefetch_depth: int = 2  # batches gathered ahead

    def __post_init__(self) -> None:
        self.mode = choice(BatchingMode, self.mode, "batching.mode")
        _check(self.window >= 1, "batching.window", "a positive number of steps", self.window)
        _check(self.horizon >= 1, "batching.horizon", "a positive number of steps", self.horizon)
        _check(self.stride >= 1, "batching.stride", "a positive number of steps", self.stride)
        _check(self.batch_size == "auto" or (isinstance(self.batch_size, int) and not isinstance(self.batch_size, bool)
                                              and self.batch_size >= 1), "batching.batch_size",
               "a positive integer or auto", self.batch_size)
        _check(isinstance(self.max_batch_size, int) and self.max_batch_size >= 1, "batching.max_batch_size",
               "a positive integer", self.max_batch_size)
        _check(self.eval_batch_size is None or self.eval_batch_size >= 1, "batching.eval_batch_size",
               "a positive integer or null", self.eval_batch_size)
        self.device = choice(DataDevice, self.device, "batching.device")
        self.dtype = choice(SeriesDtype, self.dtype, "batching.dtype")
        _check(self.global_batch_size is None or self.global_batch_size >= 1, "batching.global_batch_size",
               "a positive integer or null", self.global_batch_size)
        _check(self.prefetch_depth >= 1, "batching.prefetch_depth", "a positive number of batches",
               self.prefetch_depth)
        self.shard = choice(Shard, self.shard, "batching.shard")


AUTO_MAX_EPOCHS = 500  # max_epochs=auto's ceiling: patience or the time budget end a run long before
AUTO_TIME_BUDGET_MIN = 5.0  # max_epochs=auto's budget unless trainer.time_budget_min says otherwise


@dataclass(kw_only=True)
class TrainerConfig:
    # A number of epochs, or auto: until validation stops improving (patience) or the time budget is spent
    max_epochs: Any = 1
    # max_epochs=auto's budget: no epoch starts that would end past this many minutes of training (resumed
    # attempts count); null: AUTO_TIME_BUDGET_MIN. A number of epochs runs them all (early stopping aside).
    time_budget_min: Optional[float] = None
    lr: float = 1e-3
    adam_eps: float = 1e-8  # Adam's epsilon (torch's default; DCRNN's published protocol uses 1e-3)
    weight_decay: float = 0.0
    lr_milestones: list[int] = field(default_factory=list)  # epochs at which lr *= lr_gamma
    lr_gamma: float = 0.1
    clip_grad_norm: float = 5.0  # 0 disables clipping
    patience: int = 10  # epochs without a better validation MAE before stopping
    seed: int = 0
    deterministic: bool = False  # deterministic kernels, and each gradient all-reduced alone (bitwise resumes)
    bf16: bool = False  # autocast to bfloat16 on CUDA
    tf32: bool = True  # TF32 matmuls and convolutions on GPUs that have them (Ampere and later)
    compile: bool = False  # torch.compile the model (fewer kernel launches where steps are launch-bound)
    lr_scaling: LrScaling = LrScaling.none  # with batching.global_batch_size: linear | sqrt in the global batch / 64
    log_every_s: float = 30.0  # without a terminal: a progress line this often
    tensorboard: bool = False  # per-epoch metrics to TensorBoard (run_dir/tensorboard) as well
    save_predictions: bool = False  # de-normalised test predictions, targets and mask in predictions.npz
    checkpoint_every_min: Optional[float] = None  # also a step checkpoint this often (SIGUSR1/SIGTERM always)
    resume: bool = False  # continue from the run directory's last checkpoint
    progress: bool = True  # progress bar on rank 0 (only when stderr is a terminal: batch logs stay clean)
    max_batches_per_epoch: Optional[int] = None  # cap for smoke tests and profiling
    max_eval_batches: Optional[int] = None  # cap on each evaluation's batches (benchmarks at full scale)
    activation_checkpointing: bool = False  # recompute each recurrent step in the backward pass: less memory
    num_threads: Optional[int] = None  # torch intra-op threads; None = this process's share of the cores
    # T-GCN's reporting: metrics pooled over output steps 1..k for each k here (e.g. [3, 6, 9, 12]), with
    # accuracy 1 - ||Y - Ŷ||_F / ||Y||_F, as results.json's val_pooled / test_pooled keyed by minutes.
    pooled_steps: list[int] = field(default_factory=list)

    @property
    def epoch_limit(self) -> int:
        return AUTO_MAX_EPOCHS if self.max_epochs == "auto" else self.max_epochs

    @property
    def budget_s(self) -> float | None:
        """max_epochs=auto's time budget in seconds; None for a number of epochs."""
        if self.max_epochs != "auto":
            return None
        return 60.0 * (AUTO_TIME_BUDGET_MIN if self.time_budget_min is None else self.time_budget_min)

    def __post_init__(self) -> None:
        _check(self.max_epochs == "auto" or (isinstance(self.max_epochs, int) and not isinstance(self.max_epochs, bool)
                                             and self.max_epochs >= 1),
               "trainer.max_epochs", "a positive integer or auto", self.max_epochs)
        _check(self.time_budget_min is None or self.time_budget_min > 0, "trainer.time_budget_min",
               "a positive number of minutes or null", self.time_budget_min)
        _check(self.lr > 0, "trainer.lr", "a positive learning rate", self.lr)
        self.lr_scaling = choice(LrScaling, self.lr_scaling, "trainer.lr_scaling")
        _check(self.log_every_s > 0, "trainer.log_every_s", "a positive number of seconds", self.log_every_s)
        _check(self.checkpoint_every_min is None or self.checkpoint_every_min > 0, "trainer.checkpoint_every_min",
               "a positive number of minutes or null", self.checkpoint_every_min)
        _check(self.adam_eps > 0, "trainer.adam_eps", "a positive epsilon", self.adam_eps)
        _check(self.patience >= 1, "trainer.patience", "a positive number of epochs", self.patience)
        _check(self.clip_grad_norm >= 0, "trainer.clip_grad_norm", "0 (off) or a positive norm", self.clip_grad_norm)
        _check(0 < self.lr_gamma <= 1, "trainer.lr_gamma", "a factor in (0, 1]", self.lr_gamma)
        _check(self.max_batches_per_epoch is None or self.max_batches_per_epoch >= 1,
               "trainer.max_batches_per_epoch", "a positive integer or null", self.max_batches_per_epoch)
        _check(self.max_eval_batches is None or self.max_eval_batches >= 1,
               "trainer.max_eval_batches", "a positive integer or null", self.max_eval_batches)
        _check(all(k >= 1 for k in self.pooled_steps), "trainer.pooled_steps",
               "positive numbers of output steps", self.pooled_steps)


@dataclass(kw_only=True)
class LauncherConfig:
    """How the ranks are started: `local` (this machine, torchrun when gpus > 1) or `slurm` (submitit)."""

    name: LauncherName = LauncherName.local
    gpus_per_node: int = 4  # ranks per node on Slurm (GPUs, or CPU processes on a CPU cluster)
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    time_min: int = 60  # Slurm time limit in minutes
    mem_gb: Optional[int] = None  # memory per node
    cpus_per_task: Optional[int] = None  # cores per node-task (None = let Slurm decide)
    constraint: Optional[str] = None
    setup: list[str] = field(default_factory=list)  # shell lines run before torchrun (module load ...)
    sbatch_extra: dict = field(default_factory=dict)  # any other #SBATCH option, e.g. {mail-type: END}
    rdzv_port: int = 29500  # c10d rendezvous port on the first node; 0 = 15000 + job id % 10000 (Slurm)
    max_restarts: int = 0  # torchrun --max-restarts: restarted ranks resume from the last checkpoint
    dry_run: bool = False  # print the batch script and torchrun command, submit nothing
    wait: bool = False  # follow the job to its end and print its result
    cpu: Optional[bool] = None  # force a CPU (gloo) cluster; None = GPUs when launcher.name=slurm
    signal_delay_s: int = 120  # Slurm: signal this long before the time limit to checkpoint and requeue
    prepare_only: bool = False  # Slurm: write the run dir and config.yaml, submit nothing (train.sbatch)
    dist_timeout_min: float = 30.0  # process-group timeout: the first rank's data load must fit in it
    cpus_per_rank: int = 8  # GPU Slurm jobs: cores asked per rank when cpus_per_task is null
    array_parallelism: Optional[int] = None  # Slurm sweeps (-m): one job array, this many points at once
    # Where hostnames resolve to loopback (127.0.1.1), c10d and gloo would silently bind it:
    local_addr: Optional[str] = None  # torchrun --local_addr: the address this node announces (local runs)
    rdzv_conf: Optional[str] = None  # torchrun --rdzv_conf, e.g. "join_timeout=900,read_timeout=120"
    socket_ifname: Optional[str] = None  # GLOO_/NCCL_SOCKET_IFNAME; on Slurm each node announces its address on it
    backend: Backend = Backend.auto
    gpu_mem_gb: Optional[float] = None  # memory of one GPU of the Slurm nodes: the plan checks the device side
    # Timeout of every training collective (the default process group): a dead or hung rank stops the others
    # after it. The setup's waits (a node's first rank loading the data) have dist_timeout_min instead.
    collective_timeout_min: float = 5.0

    def __post_init__(self) -> None:
        self.name = choice(LauncherName, self.name, "launcher.name")
        _check(self.gpus_per_node >= 1, "launcher.gpus_per_node", "a positive integer", self.gpus_per_node)
        _check(self.time_min >= 1, "launcher.time_min", "a positive number of minutes", self.time_min)
        _check(self.dist_timeout_min > 0, "launcher.dist_timeout_min", "a positive number of minutes",
               self.dist_timeout_min)
        _check(self.cpus_per_rank >= 1, "launcher.cpus_per_rank", "a positive number of cores", self.cpus_per_rank)
        _check(self.max_restarts >= 0, "launcher.max_restarts", "0 or more", self.max_restarts)
        _check(0 <= self.rdzv_port <= 65535, "launcher.rdzv_port", "a TCP port (0: from the job id)", self.rdzv_port)
        _check(self.name != "slurm" or 1 <= self.signal_delay_s < 60 * self.time_min, "launcher.signal_delay_s",
               f"seconds before the end, less than launcher.time_min={self.time_min} minutes", self.signal_delay_s)
        _check(not self.prepare_only or self.name == "slurm", "launcher.prepare_only",
               "launcher=slurm (it prepares a run for a batch script)", self.prepare_only)
        _check(self.array_parallelism is None or self.array_parallelism >= 1, "launcher.array_parallelism",
               "a positive number of array tasks running at once, or null (one job per sweep point)",
               self.array_parallelism)
        self.backend = choice(Backend, self.backend, "launcher.backend")
        _check(self.gpu_mem_gb is None or self.gpu_mem_gb > 0, "launcher.gpu_mem_gb", "a positive number of GiB or null",
               self.gpu_mem_gb)
        _check(self.rdzv_conf is None or all("=" in item for item in self.rdzv_conf.split(",")),
               "launcher.rdzv_conf", "key=value pairs separated by commas", self.rdzv_conf)
        _check(self.collective_timeout_min > 0, "launcher.collective_timeout_min", "a positive number of minutes",
               self.collective_timeout_min)


@dataclass(kw_only=True)
class MetricsConfig:
    # MAPE only over targets with |y| above this (near-zero targets make it meaningless); null: 1% of the
    # RMS magnitude of the training readings (train/metrics.auto_mape_threshold). Presets set their own.
    mape_threshold: Optional[float] = None

    def __post_init__(self) -> None:
        _check(self.mape_threshold is None or self.mape_threshold >= 0, "metrics.mape_threshold",
               "0 or more, or null (from the training readings)", self.mape_threshold)


@dataclass(kw_only=True)
class Config:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    gpus: int = 1  # ranks in total (GPUs, or CPU processes where there are none)
    run_dir: Optional[str] = None  # set from Hydra's run directory

    def __post_init__(self) -> None:
        _check(self.gpus >= 1, "gpus", "a positive number of ranks", self.gpus)
        if self.launcher.name == "slurm":
            _check(self.gpus % self.launcher.gpus_per_node == 0, "gpus",
                   f"a multiple of launcher.gpus_per_node={self.launcher.gpus_per_node}", self.gpus)
        if self.batching.global_batch_size is not None:
            _check(self.batching.global_batch_size % self.gpus == 0, "batching.global_batch_size",
                   f"a multiple of gpus={self.gpus} (every rank takes the same share)",
                   self.batching.global_batch_size)


def register_configs() -> None:
    """Put the schema under conf/'s groups: every key exists, typed, before any override is applied."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    schema = OmegaConf.structured(Config)
    # A model's hyperparameters are its constructor's to check (models/registry.build_model), so that
    # `model.params.hidden=64` works without `+` for model=custom and pyg_recurrent, whose keys no yaml lists.
    OmegaConf.set_struct(schema.model.params, False)
    ConfigStore.instance().store(name="schema", node=schema)


def choice_keys() -> dict[str, type[StrEnum]]:
    """Every key whose value is a choice, with its StrEnum: {"batching.mode": BatchingMode, ...}."""
    from dataclasses import fields, is_dataclass
    from typing import get_type_hints

    keys = {}
    for group, kind in get_type_hints(Config).items():
        if is_dataclass(kind):
            hints = get_type_hints(kind)
            keys.update({f"{group}.{f.name}": hints[f.name] for f in fields(kind)
                         if isinstance(hints[f.name], type) and issubclass(hints[f.name], StrEnum)})
    return keys
