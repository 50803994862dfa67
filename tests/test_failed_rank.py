"""A failed rank ends the job in minutes: srun kills the step when one node task fails, training's collectives
time out after launcher.collective_timeout_min while only the setup's waits (the data load) have the long
launcher.dist_timeout_min, NCCL's asynchronous error handling is on, and failed.json names the rank that
failed. The last test kills a rank of a real 2-rank job on the local Slurm cluster."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from helpers import TINY, compose_config, is_rank_process
from stgnn_launch.distributed import context
from stgnn_launch.distributed.context import ASYNC_ERROR_ENV, RankEnv
from stgnn_launch.errors import UserError
from stgnn_launch.launch.agent import RANK_FAILED, record_failure, worker_run_dir
from stgnn_launch.launch.node_task import TorchrunJob
from stgnn_launch.launch.slurm_submit import slurm_parameters

try:  # tests/ on sys.path (conftest.py puts it there)
    from slurm_cluster import slurm_cluster, wait_for_job, workdir  # noqa: F401
except ImportError:  # tests/ as a package
    from tests.slurm_cluster import slurm_cluster, wait_for_job, workdir  # noqa: F401


def test_srun_kills_the_step_when_a_node_task_fails():
    for overrides in [("launcher.cpu=true",), ("launcher.cpus_per_task=16",), ()]:
        params = slurm_parameters(compose_config("launcher=slurm", "gpus=8", "launcher.gpus_per_node=4", *overrides))
        assert params["srun_args"][0] == "--kill-on-bad-exit=1", params
    # ... and each node task's torchrun is the agent that names a failed rank
    assert "stgnn_launch.launch.agent" in TorchrunJob("/runs/a", 4, 0, 0).command(2, "n001", "77")


def test_collective_timeout_is_validated_in_one_line():
    assert compose_config().launcher.collective_timeout_min == 5.0
    with pytest.raises(UserError, match=r"^launcher\.collective_timeout_min: expected a positive number of minutes, "
                                        r"found 0\.0$"):
        compose_config("launcher.collective_timeout_min=0")


@pytest.fixture
def fake_process_group(monkeypatch):
    """init_distributed's torch.distributed calls, recorded instead of made (no peers, no GPU needed)."""
    calls: list[tuple] = []
    monkeypatch.setattr(context, "_attempt_store", lambda rank, world: "store")
    monkeypatch.setattr(context.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(context.dist, "init_process_group",
                        lambda **kw: calls.append(("init", kw["backend"], kw["timeout"])))
    monkeypatch.setattr(context.dist, "new_group", lambda backend, timeout: ("group", backend, timeout))
    monkeypatch.setattr(context.dist, "all_reduce",
                        lambda tensor, op=None, group=None: calls.append(("all_reduce", group, tensor.device.type)))
    monkeypatch.setattr(context.dist, "barrier", lambda group=None: calls.append(("barrier", group)))
    monkeypatch.delenv(ASYNC_ERROR_ENV, raising=False)
    return calls


def test_nccl_collectives_get_the_short_timeout_and_the_load_waits_on_gloo(fake_process_group, tmp_path,
                                                                           monkeypatch):
    from stgnn_launch.distributed.shared_series import load_node_shared
    from stgnn_launch.planning.layout import prepare_spec

    calls = fake_process_group
    two_ranks = RankEnv(rank=0, local_rank=0, world_size=2, local_world_size=2)
    ctx = context.init_distributed(two_ranks, torch.device("cpu"), "nccl", timeout_s=1800, collective_timeout_s=180)
    assert calls == [("init", "nccl", timedelta(seconds=180))]  # every NCCL collective: 3 minutes
    assert ctx.control == ("group", "gloo", timedelta(seconds=180))  # the step-boundary votes too
    assert ctx.setup == ("group", "gloo", timedelta(seconds=1800))  # the load waits: the long timeout, on gloo
    assert os.environ[ASYNC_ERROR_ENV] == "1"
    # the node's first rank loads the series; every wait of that load is on the setup group, on the host
    calls.clear()
    cfg = compose_config(*TINY, "batching=dist_index")
    load_node_shared(cfg.dataset, prepare_spec(cfg), torch.float32, ctx, str(tmp_path))
    assert calls == [("all_reduce", ctx.setup, "cpu"), ("barrier", ctx.setup)]
    # the end of the run waits for rank 0's last writes: the setup group too
    calls.clear()
    monkeypatch.setattr(context.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(context.dist, "destroy_process_group", lambda: calls.append(("destroy",)))
    context.shutdown(ctx)
    assert calls == [("barrier", ctx.setup), ("destroy",)]


def test_gloo_world_gets_the_short_timeout_and_a_users_nccl_setting_stays(fake_process_group, monkeypatch):
    monkeypatch.setenv(ASYNC_ERROR_ENV, "3")
    ctx = context.init_distributed(RankEnv(world_size=2, local_world_size=2), torch.device("cpu"), "gloo",
                                   timeout_s=1800, collective_timeout_s=120)
    assert fake_process_group == [("init", "gloo", timedelta(seconds=120))]
    assert ctx.control is context.dist.group.WORLD and ctx.setup == ("group", "gloo", timedelta(seconds=1800))
    assert os.environ[ASYNC_ERROR_ENV] == "3"


def test_the_run_passes_both_timeouts(monkeypatch, tmp_path):
    from stgnn_launch.train import run, session

    seen = {}

    def stop(env, device, backend, timeout_s, collective_timeout_s):
        seen.update(timeout_s=timeout_s, collective_timeout_s=collective_timeout_s)
        raise SystemExit(0)

    monkeypatch.setattr(session, "init_distributed", stop)  # the rank session joins the process group
    monkeypatch.setattr(session, "configure_device", lambda cfg, plan: None)
    cfg = compose_config(*TINY, "launcher.collective_timeout_min=2", "launcher.dist_timeout_min=45")
    with pytest.raises(SystemExit):
        run.run_training(cfg, tmp_path)
    assert seen == {"timeout_s": 2700.0, "collective_timeout_s": 120.0}


def failure(local_rank: int, exitcode: int, timestamp: int):
    """torchrun's ProcessFailure, as ChildFailedError.failures holds it."""
    name = signal.Signals(-exitcode).name if exitcode < 0 else "<N/A>"
    return SimpleNamespace(local_rank=local_rank, exitcode=exitcode, timestamp=timestamp, signal_name=lambda: name)


def test_failed_json_names_the_first_failed_rank(tmp_path):
    assert worker_run_dir(["-m", "stgnn_launch.cli.other", str(tmp_path)]) is None
    argv = ["agent", "--nproc_per_node=2", "-m", "stgnn_launch.train.worker", str(tmp_path)]
    assert worker_run_dir(argv) == tmp_path and worker_run_dir(argv + ["--eval", "test"]) is None
    # rank 1 killed; torchrun then saw rank 0 fail (its collective), or stopped it, in the same second
    record = record_failure(tmp_path, {1: failure(1, -9, 100), 0: failure(0, -15, 100)}, host="n1")
    assert record["failed_rank"] == {"rank": 1, "local_rank": 1, "host": "n1", "exitcode": -9, "signal": "SIGKILL",
                                     "time": 100}
    assert record["error"] == "rank 1 on n1 ended with signal SIGKILL" and record["type"] == RANK_FAILED
    # a later failure on another node keeps the first; rank 0's own error (written by it) stays
    (tmp_path / "failed.json").write_text(json.dumps({**record, "error": "rank 0's own error", "type": "X"}))
    record_failure(tmp_path, {2: failure(0, 1, 101)}, host="n2")
    record = json.loads((tmp_path / "failed.json").read_text())
    assert record["failed_rank"]["rank"] == 1 and record["error"] == "rank 0's own error"
    assert [(f["rank"], f["host"]) for f in record["failures"]] == [(1, "n1"), (0, "n1"), (2, "n2")]
    # a rank that stopped for preemption (exit 75; torchrun then stops the others): it resumes, not failed
    (tmp_path / "other").mkdir()
    assert record_failure(tmp_path / "other", {0: failure(0, 75, 1), 1: failure(1, -15, 1)}) is None
    assert not (tmp_path / "other" / "failed.json").exists()


def test_a_collective_timeout_is_named_whatever_words_the_backend_used():
    """gloo says "Timed out waiting ..." or "Application timeout caused pair closure" (wrapped by the comm hook)
    depending on where the wait was: failed.json says the same one line for both, with the key to change."""
    ctx = context.DistContext(rank=0, local_rank=0, world_size=2, local_world_size=2, device=torch.device("cpu"),
                              backend="gloo")
    hook = RuntimeError("Got the following error when running the callback: RuntimeError: Got the following error "
                        "when running the callback: RuntimeError: Application timeout caused pair closure\n\nAt:\n  x")
    recv = RuntimeError("[../third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 30000ms "
                        "for recv operation to complete")
    for err in (hook, recv):
        text = context.collective_timeout(err, ctx, 0.5)
        assert text.startswith("a collective timed out: rank 0 waited longer than "
                               "launcher.collective_timeout_min=0.5 min") and "gloo said: " in text, text
        assert "\n" not in text
    assert context.collective_timeout(ValueError("timeout"), ctx, 0.5) is None  # not a backend's error
    assert context.collective_timeout(RuntimeError("CUDA out of memory"), ctx, 0.5) is None
    single = context.DistContext(rank=0, local_rank=0, world_size=1, local_world_size=1, device=torch.device("cpu"),
                                 backend=None)
    assert context.collective_timeout(recv, single, 0.5) is None


@pytest.mark.slow
def test_a_hung_rank_ends_a_local_run_after_the_collective_timeout(tmp_path):
    """`stgnn-train gpus=2` on this machine; rank 1 stops (SIGSTOP: a hung GPU or node) mid-training. Rank 0's
    next collective times out after launcher.collective_timeout_min (not the data load's 30 minutes), torchrun
    stops rank 1 and the run ends, with failed.json naming rank 0, whose collective timed out, and its host."""
    run_dir = tmp_path / "run"
    timeout_min = 0.5
    cmd = [sys.executable, "-m", "stgnn_launch.cli.train", *TINY, "gpus=2", "batching=dist_index",
           f"launcher.collective_timeout_min={timeout_min}", "trainer.max_epochs=1000", "trainer.patience=1000",
           f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 180
        while not (run_dir / "checkpoints" / "last.pt").is_file():  # an epoch is done: mid-training
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
            time.sleep(0.5)
        ranks = rank_pids(run_dir)
        os.kill(ranks[1], signal.SIGSTOP)
        stopped = time.monotonic()
        out, _ = proc.communicate(timeout=60 * timeout_min + 90)
        ended = time.monotonic() - stopped
    finally:
        if proc.poll() is None:
            proc.kill()
    print(f"\nthe run ended {ended:.1f}s after rank 1 stopped")
    assert proc.returncode != 0 and 60 * timeout_min <= ended < 60 * timeout_min + 60 and not rank_pids(run_dir)
    failed = json.loads((run_dir / "failed.json").read_text())
    assert failed["failed_rank"]["rank"] == 0 and failed["failed_rank"]["host"] == os.uname().nodename, failed
    assert "timed out" in failed["error"].lower(), failed["error"]
    assert f"rank 0 on {os.uname().nodename} failed first" in out


# ---- on the local Slurm cluster ----------------------------------------------------------------------------


def rank_pids(run_dir: Path) -> dict[int, int]:
    """RANK -> pid of this run's live rank processes (from /proc)."""
    found = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if not is_rank_process((entry / "cmdline").read_bytes().split(b"\0"), run_dir):
                continue
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] in "ZX":
                continue
            env = dict(v.split(b"=", 1) for v in (entry / "environ").read_bytes().split(b"\0") if b"=" in v)
            found[int(env[b"RANK"])] = int(entry.name)
        except (OSError, KeyError, ValueError):
            continue
    return found


@pytest.mark.slurm
def test_a_killed_rank_ends_the_slurm_job_and_is_named(slurm_cluster, workdir):
    """2 gloo ranks in one node task; rank 1 is killed (SIGKILL) mid-training: the job ends well within the
    collective timeout plus a minute (torchrun stops rank 0, the node task fails, srun ends the step) and
    failed.json names rank 1 and its host."""
    run_dir = workdir / "run"
    timeout_min = 1.0
    cmd = [sys.executable, "-m", "stgnn_launch.cli.train", *TINY, "launcher=slurm", "launcher.cpu=true", "gpus=2",
           "launcher.gpus_per_node=2", "batching=dist_index", f"launcher.partition={slurm_cluster.partition}",
           "launcher.wait=true", f"launcher.collective_timeout_min={timeout_min}", "trainer.max_epochs=1000",
           "trainer.patience=1000", f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=workdir,
                            env=slurm_cluster.env())
    try:
        deadline = time.monotonic() + 240
        while not (run_dir / "checkpoints" / "last.pt").is_file():  # an epoch is done: mid-training
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
            time.sleep(1)
        ranks = rank_pids(run_dir)
        assert sorted(ranks) == [0, 1], ranks
        os.kill(ranks[1], signal.SIGKILL)
        killed = time.monotonic()
        out, _ = proc.communicate(timeout=60 * timeout_min + 60)  # launcher.wait: stgnn-train follows the job
        job_id = re.search(r"submitted Slurm job (\d+)", out).group(1)
        state = wait_for_job(job_id, timeout=60 * timeout_min + 60 - (time.monotonic() - killed))
        ended = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            proc.kill()
    print(f"\nSlurm job {job_id} ended ({state}) {ended:.1f}s after rank 1 was killed")
    assert state == "FAILED" and ended < 60 * timeout_min + 60 and not rank_pids(run_dir)
    assert proc.returncode == 1 and re.search(rf"Slurm job {job_id} ended in state \S+ without success", out), out
    failed = json.loads((run_dir / "failed.json").read_text())
    host = os.uname().nodename
    assert failed["failed_rank"]["rank"] == 1 and failed["failed_rank"]["signal"] == "SIGKILL", failed
    assert failed["failed_rank"]["host"] == host and not (run_dir / "results.json").exists()
    log = (run_dir / "slurm" / job_id / f"{job_id}_0_log.err").read_text()
    assert f"rank 1 on {host} failed first" in log
    assert "--kill-on-bad-exit=1" in (run_dir / "slurm" / job_id / f"{job_id}_submission.sh").read_text()
