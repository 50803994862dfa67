"""Launch plumbing that needs no cluster: the torchrun line, Slurm parameters, the dry run."""

import subprocess
import sys

import pytest

from helpers import compose_config
from stgnn_launch.launch.slurm_submit import slurm_parameters
from stgnn_launch.launch.torchrun import build_torchrun_cmd


def test_torchrun_command_multi_node():
    cmd = build_torchrun_cmd(nnodes=32, nproc_per_node=4, run_dir="/runs/a", rdzv_endpoint="n001:29500",
                             rdzv_id="777", max_restarts=2, python="python")
    assert cmd == ["python", "-m", "torch.distributed.run", "--nnodes=32", "--nproc_per_node=4", "--max_restarts=2",
                   "--rdzv_backend=c10d", "--rdzv_endpoint=n001:29500", "--rdzv_id=777",
                   "-m", "stgnn_launch.train.worker", "/runs/a"]


def test_torchrun_command_standalone_and_eval():
    cmd = build_torchrun_cmd(nnodes=1, nproc_per_node=2, run_dir="r", standalone=True, python="py",
                             worker_args=("--eval", "test"))
    assert "--standalone" in cmd and not any(c.startswith("--rdzv") for c in cmd)
    assert cmd[-4:] == ["stgnn_launch.train.worker", "r", "--eval", "test"]
    with pytest.raises(ValueError, match="rendezvous endpoint"):
        build_torchrun_cmd(nnodes=2, nproc_per_node=1, run_dir="r")


def test_slurm_parameters_from_config():
    cfg = compose_config("launcher=slurm", "gpus=128", "launcher.gpus_per_node=4", "launcher.partition=gpu",
                         "launcher.account=proj", "launcher.qos=high", "launcher.mem_gb=200",
                         "launcher.constraint=a100", "launcher.time_min=90", "launcher.cpus_per_task=32",
                         "launcher.setup=[module load cuda]", "+launcher.sbatch_extra.mail-type=END")
    params = slurm_parameters(cfg)
    assert params["nodes"] == 32 and params["ntasks_per_node"] == 1 and params["gpus_per_node"] == 4
    assert (params["partition"], params["account"], params["qos"], params["constraint"]) == ("gpu", "proj", "high", "a100")
    assert params["mem"] == "200GB" and params["time"] == 90 and params["cpus_per_task"] == 32
    assert params["setup"] == ["module load cuda"] and params["additional_parameters"] == {"mail-type": "END"}


def test_cpu_cluster_requests_no_gpus():
    cfg = compose_config("launcher=slurm", "gpus=4", "launcher.gpus_per_node=2", "launcher.cpu=true")
    params = slurm_parameters(cfg)
    assert params["nodes"] == 2 and "gpus_per_node" not in params


def run_cli(tmp_path, *overrides):
    return subprocess.run([sys.executable, "-m", "stgnn_launch.cli.train", f"hydra.run.dir={tmp_path / 'run'}",
                           *overrides], capture_output=True, text=True, timeout=120)


def test_dry_run_shows_32_nodes_and_torchrun(tmp_path):
    proc = run_cli(tmp_path, "launcher=slurm", "gpus=128", "launcher.gpus_per_node=4", "launcher.dry_run=true",
                   "batching=dist_index")
    assert proc.returncode == 0, proc.stderr
    assert "#SBATCH --nodes=32" in proc.stdout and "#SBATCH --ntasks-per-node=1" in proc.stdout
    assert "#SBATCH --gpus-per-node=4" in proc.stdout
    assert "--nnodes=32 --nproc_per_node=4" in proc.stdout and "--rdzv_backend=c10d" in proc.stdout
    assert "32 nodes x 4 ranks = 128 ranks; nothing submitted" in proc.stdout
    assert not (tmp_path / "run").exists()  # a dry run leaves nothing behind


def test_gpus_not_a_multiple_of_gpus_per_node_is_refused(tmp_path):
    proc = run_cli(tmp_path, "launcher=slurm", "gpus=6", "launcher.gpus_per_node=4", "launcher.dry_run=true")
    assert proc.returncode == 2
    assert "gpus: expected a multiple of launcher.gpus_per_node=4, found 6" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()


@pytest.mark.parametrize("override, message", [
    ("batching.window=0", "batching.window: expected a positive number of steps, found 0"),
    ("dataset.train_ratio=0.9", "dataset.train_ratio + dataset.test_ratio: expected less than 1"),
    ("trainer.lr=-1", "trainer.lr: expected a positive learning rate, found -1.0"),
])
def test_bad_values_name_the_key(tmp_path, override, message):
    proc = run_cli(tmp_path, override)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("overrides", [("batching.mode=fast",), ("-m", "batching.mode=index,fast")])
def test_a_bad_choice_is_one_line_before_hydra_composes(tmp_path, overrides):
    proc = run_cli(tmp_path, *overrides)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "stgnn-train: error: batching.mode: expected one of standard, index, dist_index, found 'fast'"]
    assert not (tmp_path / "run").exists()


def test_bad_types_and_unknown_keys_are_refused_by_the_schema(tmp_path):
    proc = run_cli(tmp_path, "batching.window=abc")
    assert proc.returncode != 0 and "batching.window" in proc.stderr and "Integer" in proc.stderr
    proc = run_cli(tmp_path, "trainer.epochs=3")
    assert proc.returncode != 0 and "trainer.epochs" in proc.stderr
