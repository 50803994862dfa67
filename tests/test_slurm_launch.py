"""Training on the local one-node Slurm cluster, for real: `stgnn-train launcher=slurm` (submitit),
scripts/slurm/train.sbatch and sweep.sbatch, and a job that reaches its time limit, is requeued and
resumes from its last checkpoint.

Every job trains 2 gloo ranks (or 1 per array task) on tiny synthetic data. The jobs inherit this
session's environment (sbatch exports it all by default), so STGNN_CACHE set by conftest.py reaches them.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import REPO, TINY, compose_config
from stgnn_launch.config.load import load_run_config
from stgnn_launch.data.synthetic import synthetic_path
from stgnn_launch.errors import UserError
from stgnn_launch.launch import node_task
from stgnn_launch.launch.node_task import TorchrunJob, rdzv_port
from stgnn_launch.launch.slurm_submit import batch_script, slurm_parameters

try:  # tests/ on sys.path (conftest.py puts it there)
    from slurm_cluster import (job_info, slurm_cluster, start_requeued_now, submit, wait_for_job,  # noqa: F401
                               workdir)
except ImportError:  # tests/ as a package
    from tests.slurm_cluster import (job_info, slurm_cluster, start_requeued_now, submit,  # noqa: F401
                                     wait_for_job, workdir)

TWO_CPU_RANKS = ("launcher=slurm", "launcher.cpu=true", "gpus=2", "launcher.gpus_per_node=2", "batching=dist_index")


def stgnn_train_cmd(cluster, run_dir: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "stgnn_launch.cli.train", *TINY, *TWO_CPU_RANKS, "launcher.wait=true",
            f"launcher.partition={cluster.partition}", f"hydra.run.dir={run_dir}", *overrides]


# ---- without a cluster ------------------------------------------------------------------------------


def test_cpu_cluster_asks_one_core_per_rank_and_passes_it_to_srun():
    cfg = compose_config("launcher=slurm", "gpus=4", "launcher.gpus_per_node=2", "launcher.cpu=true",
                         "launcher.signal_delay_s=30", "launcher.time_min=1")
    params = slurm_parameters(cfg)
    assert params["cpus_per_task"] == 2 and params["srun_args"] == ["--kill-on-bad-exit=1", "--cpus-per-task=2"]
    assert params["signal_delay_s"] == 30 and params["time"] == 1 and "gpus_per_node" not in params
    gpu = slurm_parameters(compose_config("launcher=slurm", "gpus=8", "launcher.gpus_per_node=4"))
    # GPU nodes: cpus_per_rank (8) cores per GPU, so that each rank's batch assembly has its share
    assert gpu["cpus_per_task"] == 32 and gpu["srun_args"] == ["--kill-on-bad-exit=1", "--cpus-per-task=32"]
    assert gpu["signal_delay_s"] == 120
    assert slurm_parameters(compose_config("launcher=slurm", "gpus=8", "launcher.gpus_per_node=4",
                                           "launcher.cpus_per_rank=4"))["cpus_per_task"] == 16
    assert slurm_parameters(compose_config("launcher=slurm", "gpus=2", "launcher.gpus_per_node=2", "launcher.cpu=true",
                                           "launcher.cpus_per_task=8"))["cpus_per_task"] == 8


def test_rendezvous_port_from_the_job_id():
    assert rdzv_port(0, "123456") == 15000 + 3456 and rdzv_port(0, 7) == 15007 and rdzv_port(29500, "7") == 29500
    job = TorchrunJob("/runs/a", 4, 0, 0)
    assert "--rdzv_endpoint=n001:15077" in job.command(2, "n001", "77")
    assert "--rdzv_endpoint=$FIRST_NODE:$((15000+SLURM_JOB_ID%10000))" in job.command(2, "$FIRST_NODE", "$SLURM_JOB_ID")


@pytest.mark.parametrize("overrides, message", [
    (("launcher.signal_delay_s=60", "launcher.time_min=1"), "launcher.signal_delay_s: expected seconds before the end"),
    (("launcher.prepare_only=true", "launcher=local"), "launcher.prepare_only: expected launcher=slurm"),
])
def test_bad_slurm_values_name_the_key(overrides, message):
    with pytest.raises(UserError, match=re.escape(message)):
        compose_config("launcher=slurm", "gpus=4", *overrides)


def test_prepare_only_writes_the_run_dir_and_submits_nothing(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "stgnn_launch.cli.train", "launcher=slurm", "gpus=4",
                           "launcher.gpus_per_node=2", "launcher.cpu=true", "launcher.prepare_only=true",
                           f"hydra.run.dir={run_dir}"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PATH": "/usr/bin:/bin"})  # no srun needed
    assert proc.returncode == 0, proc.stderr
    assert f"prepared run directory {run_dir}" in proc.stdout and "nothing submitted" in proc.stdout
    config = load_run_config(run_dir)
    assert config.gpus == 4 and config.launcher.cpu and not (run_dir / "slurm").exists()


def test_torchrun_and_its_ranks_do_not_outlive_the_node_task(tmp_path):
    """submitit ends the node task right after requeueing it: torchrun must not outlive it, nor a rank in a
    session of its own; both ignore the preemption signal, which is the node task's to act on."""
    pidfile = tmp_path / "rank.pid"
    fake_torchrun = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(1))\n"
        "rank = subprocess.Popen(['sleep', '120'], start_new_session=True)\n"
        "ignored = signal.getsignal(signal.SIGUSR2) == signal.SIG_IGN\n"
        f"open({str(pidfile)!r}, 'w').write(f'{{rank.pid}} {{ignored}}')\n"
        "time.sleep(120)\n")

    def leave(*_):
        raise SystemExit(-1)

    previous = signal.signal(signal.SIGALRM, leave)
    try:
        signal.setitimer(signal.ITIMER_REAL, 3)  # time enough for the fake torchrun to start its rank
        with pytest.raises(SystemExit):
            node_task.run_torchrun([sys.executable, "-c", fake_torchrun], dict(os.environ), ignore=signal.SIGUSR2)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    rank, ignored = pidfile.read_text().split()
    assert ignored == "True"
    time.sleep(0.5)
    try:
        state = Path(f"/proc/{rank}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        state = "gone"
    assert state in ("gone", "Z", "X"), f"rank {rank} still running ({state})"



def test_train_sbatch_only_starts_the_node_task():
    """The node's work (torchrun, the port rule, the requeue) is the node task's: the script holds none of it."""
    script = REPO / "scripts" / "slurm" / "train.sbatch"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    code = [line.split(" # ")[0] for line in script.read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")]  # (without comments)
    assert not [line for line in code if re.search(r"torchrun|15000|scontrol|requeue|USR|trap |pkill", line)], code
    assert [line for line in code if "srun" in line] == [
        'exec srun --nodes="${SLURM_JOB_NUM_NODES:-1}" --ntasks-per-node=1 --kill-on-bad-exit=1 \\']
    assert code[-1].endswith('"$PYTHON" -u -m stgnn_launch.launch.node_task "$@"')
    assert "#SBATCH --signal=USR2@120" in script.read_text()  # to the steps' processes, not (B:) the shell


def test_node_task_settings_ranks_and_run_dir_from_the_environment():
    settings = node_task.BatchSettings.from_env({"STGNN_CPU": "1", "STGNN_MAX_RESTARTS": "2",
                                                 "STGNN_RDZV_CONF": "join_timeout=900", "STGNN_SOCKET_IFNAME": ""})
    assert (settings.cpu, settings.max_restarts, settings.rdzv_conf, settings.socket_ifname) == (
        True, 2, "join_timeout=900", None)
    assert settings.node_ranks({"SLURM_CPUS_PER_TASK": "6"}) == 6  # CPU nodes: a rank per core of the task
    gpu = node_task.BatchSettings.from_env({})
    assert gpu.node_ranks({"SLURM_GPUS_PER_NODE": "a100:4"}) == 4 and gpu.node_ranks({"SLURM_GPUS_ON_NODE": "8"}) == 8
    with pytest.raises(UserError, match=r"^ranks per node: expected GPUs in this job .* found '' GPUs on the node$"):
        gpu.node_ranks({})
    with pytest.raises(UserError, match=r"^STGNN_RANKS_PER_NODE: expected a whole number of at least 1, found '0'$"):
        node_task.BatchSettings.from_env({"STGNN_RANKS_PER_NODE": "0"})
    with pytest.raises(UserError, match=r"^STGNN_CPU: expected 0 or 1, found 'yes'$"):
        node_task.BatchSettings.from_env({"STGNN_CPU": "yes"})
    run_dir, rest = node_task.batch_run_dir(["model=dcrnn"], {"SLURM_JOB_ID": "77", "SLURM_ARRAY_JOB_ID": "70",
                                                              "SLURM_ARRAY_TASK_ID": "3"})
    assert run_dir == Path.cwd() / "runs" / "slurm-70_3" and rest == ["model=dcrnn"]
    run_dir, rest = node_task.batch_run_dir(["hydra.run.dir=/r/x", "gpus=9"], {"SLURM_JOB_ID": "77"})
    assert run_dir == Path("/r/x") and rest == ["gpus=9"]
    node = node_task.SlurmNode(job_id="77", num_nodes=2, head="n1", node=0, hostname="n1", restarts=0)
    cmd = node_task.prepare_command(settings, node, 3, Path("/r/x"), ["trainer.num_threads=4"],
                                    {"SLURM_CPUS_PER_TASK": "6"})
    # each rank's share of the task's cores first, so that an override given wins
    assert cmd[3:] == ["trainer.num_threads=2", "trainer.num_threads=4", "launcher=slurm", "gpus=6",
                       "launcher.gpus_per_node=3", "launcher.prepare_only=true", "launcher.cpu=true",
                       "hydra.run.dir=/r/x"]


def test_node_task_outside_a_job_or_with_bad_settings_says_so_in_one_line():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "STGNN_"))}
    run = [sys.executable, "-m", "stgnn_launch.launch.node_task", "model=dcrnn"]
    proc = subprocess.run(run, capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "node_task: error: SLURM_JOB_ID: expected a Slurm job (srun in scripts/slurm/train.sbatch), found none"]
    proc = subprocess.run(run, capture_output=True, text=True, timeout=60,
                          env={**env, "SLURM_JOB_ID": "5", "STGNN_MAX_RESTARTS": "x"})
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "node_task: error: STGNN_MAX_RESTARTS: expected a whole number of at least 0, found 'x'"]


def read_results(run_dir: Path) -> dict:
    path = run_dir / "results.json"
    assert path.is_file(), f"no {path}"
    return json.loads(path.read_text())


def submitted_job_id(output: str) -> str:
    match = re.search(r"submitted Slurm job (\d+)", output)
    assert match, output
    return match.group(1)


@pytest.mark.slurm
def test_stgnn_train_launcher_slurm_two_cpu_ranks(slurm_cluster, workdir):
    """submitit -> one node task -> torchrun (c10d) -> 2 gloo ranks; `launcher.wait` prints the result."""
    run_dir = workdir / "run"
    seed = 9000 + os.getpid() % 1000  # a series only this job generates: it must land in our STGNN_CACHE
    proc = subprocess.run(stgnn_train_cmd(slurm_cluster, run_dir, f"dataset.seed={seed}"), capture_output=True,
                          text=True, timeout=240, cwd=workdir, env=slurm_cluster.env())
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    job_id = submitted_job_id(out)
    log = run_dir / "slurm" / job_id / f"{job_id}_0_log.out"
    assert f"logs:    {log}" in out and f"run dir: {run_dir}" in out
    assert f"Slurm job {job_id} finished; results: {run_dir / 'results.json'}" in out
    assert "avg" in out and "MAE" in out  # the test metrics, printed by `follow`
    record = read_results(run_dir)
    assert record["world_size"] == 2 and record["backend"] == "gloo" and record["batching"] == "dist_index"
    assert record["device"] == "cpu" and [e["epoch"] for e in record["epochs"]] == [1, 2]
    text = log.read_text()
    # the venv's Python on the node, torchrun over both ranks with a c10d rendezvous on the first node
    assert f"{Path(sys.executable).parent}/" in text
    assert "-m stgnn_launch.launch.agent --nnodes=1 --nproc_per_node=2" in text  # torchrun, naming a failed rank
    assert "--rdzv_backend=c10d" in text and f"--rdzv_id={job_id}" in text
    port = 15000 + int(job_id) % 10000  # launcher.rdzv_port=0: from the job id
    assert f"--rdzv_endpoint={slurm_cluster.node or record['host']}:{port}" in text
    cache = Path(os.environ["STGNN_CACHE"])
    assert synthetic_path(cache / "synthetic", 10, 700, seed).is_file(), "the job did not use this session's cache"
    # the dry run's batch script is the one submitit submitted
    submitted = (run_dir / "slurm" / job_id / f"{job_id}_submission.sh").read_text()
    assert submitted == batch_script(slurm_parameters(load_run_config(run_dir)), run_dir / "slurm" / "%j")
    info = job_info(job_id) or {}
    if info:  # one core per rank: the node task asked for 2
        assert info.get("NumCPUs") == "2", info


@pytest.mark.slurm
def test_train_sbatch_two_cpu_ranks(slurm_cluster, workdir):
    """`sbatch scripts/slurm/train.sbatch OVERRIDES` on CPU nodes: prepares the run dir, then torchrun."""
    run_dir = workdir / "run"
    out = workdir / "slurm.out"
    env = slurm_cluster.env({"STGNN_CPU": "1", "STGNN_PYTHON": sys.executable})
    job_id = submit([f"--partition={slurm_cluster.partition}", "--nodes=1", "--gpus-per-node=0", "--cpus-per-task=2",
                     "--time=5", f"--output={out}", f"--chdir={workdir}", str(REPO / "scripts/slurm/train.sbatch"),
                     *TINY, "batching=dist_index", f"hydra.run.dir={run_dir}"], env=env)
    state = wait_for_job(job_id, timeout=240, poll_s=1)
    text = out.read_text() if out.exists() else "<no output>"
    assert state == "COMPLETED", text
    record = read_results(run_dir)
    assert record["world_size"] == 2 and record["backend"] == "gloo" and record["batching"] == "dist_index"
    assert record["config"]["launcher"]["cpu"] is True and record["config"]["gpus"] == 2
    assert record["config"]["trainer"]["num_threads"] == 1  # 2 cores for 2 ranks
    assert "1 nodes x 2 ranks = 2 ranks" in text and f"run dir {run_dir}" in text
    assert "--nnodes=1 --nproc_per_node=2" in text and "--rdzv_backend=c10d" in text
    assert f"--rdzv_id={job_id}" in text and (run_dir / "config.yaml").is_file()


@pytest.mark.slurm
def test_sweep_sbatch_job_array(slurm_cluster, workdir):
    """`bash scripts/slurm/sweep.sbatch [sbatch options] FILE OVERRIDES`: one array task per line."""
    sweep = workdir / "sweep.txt"
    sweep.write_text("# two runs\nbatching=index\n\nbatching=standard trainer.max_epochs=1\n")
    env = slurm_cluster.env({"STGNN_CPU": "1", "STGNN_PYTHON": sys.executable})
    proc = subprocess.run(["bash", "scripts/slurm/sweep.sbatch", "--parsable", f"--partition={slurm_cluster.partition}",
                           "--gpus-per-node=0", "--cpus-per-task=1", "--time=5", f"--chdir={workdir}",
                           f"--output={workdir}/slurm-%A_%a.out", str(sweep), *TINY],
                          capture_output=True, text=True, timeout=60, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stderr
    array_id = proc.stdout.strip().split(";")[0]
    for task, (batching, epochs) in enumerate([("index", 2), ("standard", 1)]):
        state = wait_for_job(f"{array_id}_{task}", timeout=240, poll_s=1)
        log = workdir / f"slurm-{array_id}_{task}.out"
        assert state == "COMPLETED", log.read_text() if log.exists() else "<no output>"
        record = read_results(workdir / "runs" / f"slurm-{array_id}_{task}")
        assert record["batching"] == batching and len(record["epochs"]) == epochs and record["world_size"] == 1
        assert record["config"]["trainer"]["num_threads"] == 1  # its one core (--cpus-per-task=1)


@pytest.mark.slurm
@pytest.mark.slow
def test_time_limit_checkpoints_requeues_and_resumes(slurm_cluster, workdir):
    """A 1-minute job that cannot finish: Slurm's time-limit signal (launcher.signal_delay_s=10) reaches
    submitit, which requeues the job; the requeued job resumes from the last epoch checkpoint.

    Two test-side shortcuts keep this under ~2 minutes, neither on the path under test: Slurm holds a
    requeued job for 120 s (BeginTime), which `scontrol update StartTime=now` lifts; and once the first
    run is stopped, the run's config.yaml is given a max_epochs two past its last checkpoint (and the job
    a longer limit), so the resumed run is short and not cut again. With a 1-minute limit and
    signal_delay_s=10 Slurm signals 20-50 s after the start (it checks every 30 s, up to 30 s early).
    """
    from omegaconf import OmegaConf

    from stgnn_launch.train.checkpoint import load

    run_dir = workdir / "run"
    stdout = workdir / "stgnn-train.out"
    cmd = stgnn_train_cmd(slurm_cluster, run_dir, "dataset.num_steps=3000", "trainer.max_epochs=1000",
                          "trainer.patience=1000", "launcher.time_min=1", "launcher.signal_delay_s=10")
    with stdout.open("w") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, text=True, cwd=workdir,
                                env=slurm_cluster.env())
    try:
        deadline = time.monotonic() + 60
        while not re.search(r"submitted Slurm job \d+", stdout.read_text()):
            assert proc.poll() is None and time.monotonic() < deadline, stdout.read_text()
            time.sleep(0.5)
        job_id = submitted_job_id(stdout.read_text())
        log, err = (run_dir / "slurm" / job_id / f"{job_id}_0_log.{ext}" for ext in ("out", "err"))
        deadline = time.monotonic() + 150
        while True:  # until the time-limit signal has requeued it
            info = job_info(job_id) or {}
            if int(info.get("Restarts", "0")) >= 1 and info.get("JobState") == "PENDING":
                break
            assert proc.poll() is None, stdout.read_text()
            assert time.monotonic() < deadline, f"job {job_id} not requeued: {info}\n{stdout.read_text()}"
            time.sleep(0.5)
        time.sleep(2)  # the first run's processes end within KillWait
        checkpointed = load(run_dir / "checkpoints" / "last.pt")["epoch"]
        assert checkpointed >= 1, "the job was requeued before its first epoch checkpoint"
        config = OmegaConf.load(run_dir / "config.yaml")
        config.trainer.max_epochs = checkpointed + 2
        OmegaConf.save(config, run_dir / "config.yaml")
        start_requeued_now(job_id, "TimeLimit=5")
        proc.wait(timeout=150)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = stdout.read_text()
    assert proc.returncode == 0, out + (err.read_text() if err.exists() else "")
    assert f"Slurm job {job_id}: requeued (time limit or preemption; restart 1)" in out, out
    assert f"Slurm job {job_id} finished" in out
    assert "this job is timed-out" in err.read_text()  # submitit caught Slurm's time-limit signal
    resumed = [int(n) for n in re.findall(r"resumed from \S+ at (?:the end of )?epoch (\d+)", log.read_text())]
    assert len(resumed) == 1 and resumed[0] >= checkpointed, log.read_text()
    record = read_results(run_dir)
    assert [e["epoch"] for e in record["epochs"]] == list(range(1, checkpointed + 3))
    assert record["world_size"] == 2
    if slurm_cluster.accounting:
        runs = subprocess.run(["sacct", "-D", "-X", "-n", "-P", "-j", job_id, "-o", "State"], capture_output=True,
                              text=True, timeout=30).stdout.split()
        assert runs[0] == "REQUEUED" and runs[-1] == "COMPLETED", runs


def sbatch_train(cluster, workdir: Path, name: str, *overrides: str) -> tuple[str, Path, Path]:
    """scripts/slurm/train.sbatch with 2 gloo ranks on one node: (job id, run dir, log)."""
    run_dir, out = workdir / name, workdir / f"{name}.out"
    env = cluster.env({"STGNN_CPU": "1", "STGNN_PYTHON": sys.executable})
    job_id = submit([f"--partition={cluster.partition}", "--nodes=1", "--gpus-per-node=0", "--cpus-per-task=2",
                     "--time=10", f"--output={out}", f"--chdir={workdir}", str(REPO / "scripts/slurm/train.sbatch"),
                     *overrides, f"hydra.run.dir={run_dir}"], env=env)
    return job_id, run_dir, out


@pytest.mark.slurm
@pytest.mark.slow
def test_train_sbatch_preempted_requeues_and_resumes_at_the_step(slurm_cluster, workdir):
    """train.sbatch's one srun line: the preemption signal (USR2 to the job's steps, as `--signal=USR2@120`
    sends it; here `scancel --signal=USR2`) reaches the node task, the ranks stop at a step boundary with a
    step checkpoint, the node task requeues the job, and the requeued job resumes at that step and ends
    with exactly the test metrics of the same job left alone.

    Slurm holds a requeued job for 120 s (BeginTime); `scontrol update StartTime=now` lifts that."""
    overrides = (*TINY, "dataset.num_steps=3000", "batching=dist_index", "trainer.max_epochs=3",
                 "trainer.patience=50", "trainer.deterministic=true")
    ref_id, ref_dir, ref_out = sbatch_train(slurm_cluster, workdir, "straight", *overrides)
    assert wait_for_job(ref_id, timeout=300, poll_s=1) == "COMPLETED", ref_out.read_text()
    straight = read_results(ref_dir)

    job_id, run_dir, out = sbatch_train(slurm_cluster, workdir, "preempted", *overrides)
    deadline = time.monotonic() + 240
    while not (run_dir / "checkpoints" / "last.pt").is_file():  # epoch 1 is done: the signal lands in epoch 2
        info = job_info(job_id) or {}
        assert info.get("JobState") in ("PENDING", "RUNNING", None), (info, out.read_text())
        assert time.monotonic() < deadline, out.read_text() if out.exists() else "<no output>"
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True, timeout=30)
    deadline = time.monotonic() + 120
    while True:  # the node task has requeued it
        info = job_info(job_id) or {}
        if int(info.get("Restarts", "0")) >= 1 and info.get("JobState") == "PENDING":
            break
        assert info.get("JobState") not in ("COMPLETED", "FAILED", "CANCELLED"), (info, out.read_text())
        assert time.monotonic() < deadline, f"job {job_id} not requeued: {info}\n{out.read_text()}"
        time.sleep(0.5)
    stopped = re.findall(r"stopping at epoch (\d+) step (\d+) on a signal", out.read_text())
    assert len(stopped) == 1, out.read_text()
    start_requeued_now(job_id)
    # 600 s: on a loaded machine the requeued job's start and its two gloo ranks took more than 300 s once
    assert wait_for_job(job_id, timeout=600, poll_s=1) == "COMPLETED", out.read_text()
    text = out.read_text()
    assert f"job {job_id}: time limit or preemption near" in text and f"job {job_id} (restart 1)" in text
    epoch, step = stopped[0]
    assert f"at epoch {epoch} step {step}" in text, text  # "resumed from ... at epoch E step S"
    record = read_results(run_dir)
    assert record["attempts"] == 2 and [e["epoch"] for e in record["epochs"]] == [1, 2, 3]
    assert [e["train_loss"] for e in record["epochs"]] == [e["train_loss"] for e in straight["epochs"]]
    assert record["test"] == straight["test"]
