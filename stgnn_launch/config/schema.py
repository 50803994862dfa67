"""Typed configuration: one keyword-only dataclass per config group, validated in `__post_init__`.

Hydra composes `conf/` against these schemas (registered in its ConfigStore), so a misspelt key or a
value of the wrong type is refused by OmegaConf, and a value out of range by the checks below; either
way the message names the key, what was expected and what was found.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from stgnn_launch.errors import UserError


def _check(ok: bool, key: str, expected: str, found: Any) -> None:
    if not ok:
        raise UserError(f"{key}: expected {expected}, found {found!r}")


@dataclass(kw_only=True)
class DatasetConfig:
    """Where the series and its graph come from, and the facts that belong to the data."""

    name: str = "synthetic"
    path: Optional[str] = None  # series file (.h5 pandas/native, .csv, .npy, .npz); None for synthetic
    key: Optional[str] = None  # HDF5 key of a pandas file (e.g. df, speed); None = the only one
    adj_path: Optional[str] = None  # graph file (.pkl DCRNN, .csv/.npy dense); None = synthetic's own
    start: str = "2012-03-01T00:00"  # first timestamp, for files without timestamps (csv, npy)
    freq: str = "5min"  # step, for files without timestamps
    axis_order: str = "TN"  # axes of an .npy/.npz array: TN, NT, TNF, NTF, NFT, TFN
    num_nodes: int = 80  # synthetic only
    num_steps: int = 4032  # synthetic only (two weeks of 5-minute steps)
    seed: int = 0  # synthetic only
    cache_dir: Optional[str] = None  # where generated/converted files go; None = ~/.cache/stgnn-launch
    null_value: float = 0.0  # readings equal to this are missing: skipped by the scaler, masked in metrics
    train_ratio: float = 0.7  # dcrnn split only: share of the windows for training
    test_ratio: float = 0.2  # share of the windows (dcrnn) or of the time steps (tgcn) at the end for testing
    day_of_week: bool = False  # add a day-of-week covariate after time-of-day
    split: str = "dcrnn"  # dcrnn: by sample, train/test/rest = val; tgcn: by time step, windows inside each part
    val_ratio_of_train: float = 0.2  # tgcn split only: the last share of the training part's steps = validation

    def __post_init__(self) -> None:
        _check(self.num_nodes >= 2, "dataset.num_nodes", "at least 2", self.num_nodes)
        _check(self.num_steps >= 2, "dataset.num_steps", "at least 2", self.num_steps)
        _check(0 < self.train_ratio < 1, "dataset.train_ratio", "a fraction in (0, 1)", self.train_ratio)
        _check(0 < self.test_ratio < 1, "dataset.test_ratio", "a fraction in (0, 1)", self.test_ratio)
        _check(self.split in ("dcrnn", "tgcn"), "dataset.split", "dcrnn or tgcn", self.split)
        if self.split == "dcrnn":
            _check(self.train_ratio + self.test_ratio < 1, "dataset.train_ratio + dataset.test_ratio",
                   "less than 1 (the rest is validation)", self.train_ratio + self.test_ratio)
        _check(0 < self.val_ratio_of_train < 1, "dataset.val_ratio_of_train", "a fraction in (0, 1)",
               self.val_ratio_of_train)
        _check(self.axis_order in ("TN", "NT", "TNF", "NTF", "NFT", "TFN"), "dataset.axis_order",
               "one of TN, NT, TNF, NTF, NFT, TFN", self.axis_order)
        if self.name != "synthetic":
            _check(self.path is not None, "dataset.path",
                   f"the series file of dataset {self.name!r} (set dataset.path=...)", self.path)


@dataclass(kw_only=True)
class ModelConfig:
    """`name` picks the model from the registry; every other key is passed to its constructor."""

    name: str = "tgcn"
    params: dict = field(default_factory=dict)


@dataclass(kw_only=True)
class BatchingConfig:
    mode: str = "index"  # standard | index | dist_index
    window: int = 12
    horizon: int = 12
    stride: int = 1  # steps between consecutive window starts
    batch_size: int = 64  # per rank
    eval_batch_size: Optional[int] = None  # None = batch_size
    shuffle: bool = True
    device: str = "cpu"  # cpu: series in (pinned if CUDA) host memory; gpu: series on the GPU
    shard: str = "index"  # dist_index: index (every rank maps the node's copy) | time (rank loads its range)

    def __post_init__(self) -> None:
        _check(self.mode in ("standard", "index", "dist_index"), "batching.mode",
               "one of standard, index, dist_index", self.mode)
        _check(self.window >= 1, "batching.window", "a positive number of steps", self.window)
        _check(self.horizon >= 1, "batching.horizon", "a positive number of steps", self.horizon)
        _check(self.stride >= 1, "batching.stride", "a positive number of steps", self.stride)
        _check(self.batch_size >= 1, "batching.batch_size", "a positive integer", self.batch_size)
        _check(self.eval_batch_size is None or self.eval_batch_size >= 1, "batching.eval_batch_size",
               "a positive integer or null", self.eval_batch_size)
        _check(self.device in ("cpu", "gpu"), "batching.device", "cpu or gpu", self.device)
        _check(self.shard in ("index", "time"), "batching.shard", "index or time", self.shard)


@dataclass(kw_only=True)
class TrainerConfig:
    max_epochs: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.0
    lr_milestones: list[int] = field(default_factory=list)  # epochs at which lr *= lr_gamma
    lr_gamma: float = 0.1
    clip_grad_norm: float = 5.0  # 0 disables clipping
    patience: int = 10  # epochs without a better validation MAE before stopping
    seed: int = 0
    deterministic: bool = False  # torch.use_deterministic_algorithms
    bf16: bool = False  # autocast to bfloat16 on CUDA
    resume: bool = False  # continue from the run directory's last checkpoint
    progress: bool = True  # progress bar on rank 0 (only when stderr is a terminal: batch logs stay clean)
    max_batches_per_epoch: Optional[int] = None  # cap for smoke tests and profiling
    num_threads: Optional[int] = None  # torch intra-op threads; None = this process's share of the cores
    # T-GCN's reporting: metrics pooled over output steps 1..k for each k here (e.g. [3, 6, 9, 12]), with
    # accuracy 1 - ||Y - Ŷ||_F / ||Y||_F, as results.json's val_pooled / test_pooled keyed by minutes.
    pooled_steps: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check(self.max_epochs >= 1, "trainer.max_epochs", "a positive integer", self.max_epochs)
        _check(self.lr > 0, "trainer.lr", "a positive learning rate", self.lr)
        _check(self.patience >= 1, "trainer.patience", "a positive number of epochs", self.patience)
        _check(self.clip_grad_norm >= 0, "trainer.clip_grad_norm", "0 (off) or a positive norm", self.clip_grad_norm)
        _check(0 < self.lr_gamma <= 1, "trainer.lr_gamma", "a factor in (0, 1]", self.lr_gamma)
        _check(self.max_batches_per_epoch is None or self.max_batches_per_epoch >= 1,
               "trainer.max_batches_per_epoch", "a positive integer or null", self.max_batches_per_epoch)
        _check(all(k >= 1 for k in self.pooled_steps), "trainer.pooled_steps",
               "positive numbers of output steps", self.pooled_steps)


@dataclass(kw_only=True)
class LauncherConfig:
    """How the ranks are started: `local` (this machine, torchrun when gpus > 1) or `slurm` (submitit)."""

    name: str = "local"  # local | slurm
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

    def __post_init__(self) -> None:
        _check(self.name in ("local", "slurm"), "launcher.name", "local or slurm", self.name)
        _check(self.gpus_per_node >= 1, "launcher.gpus_per_node", "a positive integer", self.gpus_per_node)
        _check(self.time_min >= 1, "launcher.time_min", "a positive number of minutes", self.time_min)
        _check(self.max_restarts >= 0, "launcher.max_restarts", "0 or more", self.max_restarts)
        _check(0 <= self.rdzv_port <= 65535, "launcher.rdzv_port", "a TCP port (0: from the job id)", self.rdzv_port)
        _check(self.name != "slurm" or 1 <= self.signal_delay_s < 60 * self.time_min, "launcher.signal_delay_s",
               f"seconds before the end, less than launcher.time_min={self.time_min} minutes", self.signal_delay_s)
        _check(not self.prepare_only or self.name == "slurm", "launcher.prepare_only",
               "launcher=slurm (it prepares a run for a batch script)", self.prepare_only)


@dataclass(kw_only=True)
class Config:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    gpus: int = 1  # ranks in total (GPUs, or CPU processes where there are none)
    run_dir: Optional[str] = None  # set from Hydra's run directory

    def __post_init__(self) -> None:
        _check(self.gpus >= 1, "gpus", "a positive number of ranks", self.gpus)
        if self.launcher.name == "slurm":
            _check(self.gpus % self.launcher.gpus_per_node == 0, "gpus",
                   f"a multiple of launcher.gpus_per_node={self.launcher.gpus_per_node}", self.gpus)


def register_configs() -> None:
    """Put the schema under conf/'s groups: every key exists, typed, before any override is applied."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(name="schema", node=Config)
