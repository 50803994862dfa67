"""Sweeps on Slurm (`stgnn-train -m ... launcher=slurm`): every point checked before anything is submitted,
one job per point or one job array, and `<sweep dir>/sweep.json` kept truthful while submitting.

The unit tests stand in for sbatch (slurm_submit.submit_jobs); the `slurm` tests submit real 1-rank CPU jobs
to the local one-node cluster (tests/slurm_cluster.py).
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

from helpers import TINY, compose_config
from stgnn_launch.config.load import load_run_config
from stgnn_launch.errors import UserError
from stgnn_launch.launch import slurm_submit, slurm_watch, sweep

try:  # tests/ on sys.path (conftest.py puts it there)
    from slurm_cluster import job_info, sacct_state, slurm_cluster, wait_for_job, workdir  # noqa: F401
except ImportError:  # tests/ as a package
    from tests.slurm_cluster import job_info, sacct_state, slurm_cluster, wait_for_job, workdir  # noqa: F401

ONE_CPU_RANK = ("launcher=slurm", "launcher.cpu=true", "launcher.gpus_per_node=1", "gpus=1")
SHORT = (*TINY, "dataset.num_steps=300", "trainer.max_epochs=1", "launcher.time_min=5")


def make_sweep(tmp_path: Path, *overrides_per_point: tuple[str, ...]) -> sweep.Sweep:
    points = []
    for num, overrides in enumerate(overrides_per_point):
        run_dir = tmp_path / "sweep" / str(num)
        config = compose_config(*ONE_CPU_RANK, *overrides)
        config.run_dir = str(run_dir)
        points.append(sweep.Point(num, list(overrides), run_dir, config))
    return sweep.Sweep(tmp_path / "sweep", "train", points)


def fake_job(job_id: str, folder: Path) -> SimpleNamespace:
    folder = Path(str(folder).replace("%j", job_id))
    paths = SimpleNamespace(stdout=folder / f"{job_id}_0_log.out", stderr=folder / f"{job_id}_0_log.err")
    return SimpleNamespace(job_id=job_id, task=lambda _: SimpleNamespace(paths=paths))


def manifest_of(sweep_dir: Path) -> dict:
    return json.loads((sweep_dir / "sweep.json").read_text())


# ---- without a cluster ------------------------------------------------------------------------------


def test_manifest_is_truthful_when_sbatch_refuses_a_point_midway(tmp_path, monkeypatch, capsys):
    """Written before the first submission (no job ids), rewritten after each: a refusal at point 1 leaves
    point 0's job id and a null for point 1, and the error says what was submitted."""
    plan = make_sweep(tmp_path, ("trainer.seed=0",), ("trainer.seed=1",))
    seen = []

    def submit_jobs(folder, params, jobs):
        seen.append([p["job_id"] for p in manifest_of(plan.dir)["points"]])
        if len(seen) == 2:
            raise UserError("launcher=slurm: sbatch refused the job: QOSMaxSubmitJobPerUserLimit")
        assert params["job_name"] == "stgnn-tgcn-index" and len(jobs) == 1
        assert jobs[0].run_dir == str(plan.points[0].run_dir) and folder == plan.points[0].run_dir / "slurm" / "%j"
        return [fake_job("101", folder)]

    monkeypatch.setattr(slurm_submit, "submit_jobs", submit_jobs)
    with pytest.raises(UserError, match=re.escape("QOSMaxSubmitJobPerUserLimit (point 1); 1 of 2 points were "
                                                  "submitted before it (101), as ")):
        sweep.submit_sweep(plan)
    assert seen == [[None, None], ["101", None]]
    manifest = manifest_of(plan.dir)
    assert [p["job_id"] for p in manifest["points"]] == ["101", None] and "array_job_id" not in manifest
    assert datetime.fromisoformat(manifest["created"]).tzinfo is not None
    first = manifest["points"][0]
    assert first == {"num": 0, "overrides": ["trainer.seed=0"], "run_dir": str(plan.points[0].run_dir),
                     "job_id": "101", "logs": [str(plan.points[0].run_dir / "slurm" / "101" / "101_0_log.out"),
                                               str(plan.points[0].run_dir / "slurm" / "101" / "101_0_log.err")]}
    # every point's config was written before anything was submitted
    assert [load_run_config(p.run_dir).trainer.seed for p in plan.points] == [0, 1]
    assert sweep.read_manifest(plan.dir) == manifest
    assert "submitted" not in capsys.readouterr().out


def test_job_array_is_one_submission_with_its_parallelism(tmp_path, monkeypatch, capsys):
    plan = make_sweep(tmp_path, *((f"trainer.seed={s}", "launcher.array_parallelism=2") for s in range(3)))
    calls = []

    def submit_jobs(folder, params, jobs):
        calls.append((folder, params, [job.run_dir for job in jobs]))
        assert manifest_of(plan.dir)["array_job_id"] is None  # written before sbatch runs
        return [fake_job(f"200_{i}", folder) for i in range(len(jobs))]

    monkeypatch.setattr(slurm_submit, "submit_jobs", submit_jobs)
    assert sweep.submit_sweep(plan) == 0
    [(folder, params, run_dirs)] = calls
    assert folder == plan.dir / "slurm" / "%j" and run_dirs == [str(p.run_dir) for p in plan.points]
    assert params["array_parallelism"] == 2 and params["job_name"] == "stgnn-sweep" and params["nodes"] == 1
    manifest = manifest_of(plan.dir)
    assert manifest["array_job_id"] == "200" and manifest["array_parallelism"] == 2
    assert [p["job_id"] for p in manifest["points"]] == ["200_0", "200_1", "200_2"]
    out = capsys.readouterr().out
    assert "submitted Slurm job array 200: 3 tasks, at most 2 running at once" in out
    assert f"    2  200_2   1 x 1          {plan.points[2].run_dir}" in out


@pytest.mark.parametrize("second, message", [
    (("launcher.array_parallelism=1", "gpus=2"),
     "gpus: expected the same value at every task of one job array (launcher.array_parallelism=1; without it "
     "every point is a job of its own), found 1 at point 0 and 2 at point 1"),
    (("launcher.array_parallelism=1", "launcher.time_min=9"), "launcher.time_min: expected the same value"),
    (("launcher.array_parallelism=2",), "launcher.array_parallelism: expected the same value at every point of a "
                                        "sweep, found 1 at point 0 and 2 at point 1"),
])
def test_points_that_cannot_share_a_submission_are_refused(tmp_path, monkeypatch, second, message):
    plan = make_sweep(tmp_path, ("launcher.array_parallelism=1",), second)
    monkeypatch.setattr(slurm_submit, "submit_jobs", lambda *a: pytest.fail("submitted"))
    with pytest.raises(UserError, match=re.escape(message)):
        sweep.submit_sweep(plan)
    assert not (plan.dir / "sweep.json").exists()


def test_separate_jobs_may_ask_for_different_resources(tmp_path, monkeypatch):
    plan = make_sweep(tmp_path, ("gpus=1",), ("gpus=2", "launcher.gpus_per_node=2"))
    asked = []

    def submit_jobs(folder, params, jobs):
        asked.append(params["cpus_per_task"])
        return [fake_job(str(300 + len(asked)), folder)]

    monkeypatch.setattr(slurm_submit, "submit_jobs", submit_jobs)
    assert sweep.submit_sweep(plan) == 0
    assert asked == [1, 2] and [p["job_id"] for p in manifest_of(plan.dir)["points"]] == ["301", "302"]


def test_wait_prints_each_points_state_and_test_mae_and_fails_if_one_failed(tmp_path, monkeypatch, capsys):
    plan = make_sweep(tmp_path, ("trainer.seed=0",), ("trainer.seed=1",))
    plan.points[0].run_dir.mkdir(parents=True)
    (plan.points[0].run_dir / "results.json").write_text(json.dumps({"test": {"avg": {"mae": 3.14159}}}))
    for num, point in enumerate(plan.points):
        point.job_id, point.logs = f"40{num}", [f"/logs/40{num}.out", f"/logs/40{num}.err"]

    class Watch:  # job 401 was cancelled by Slurm
        def __init__(self, job, label):
            self.job, self.name, self.state = job, f"Slurm job {job.job_id}{label}", "CANCELLED by 0"

        def failure(self):
            return None if self.job.job_id == "400" else "ended in state CANCELLED by 0 without a result"

    monkeypatch.setattr(slurm_watch, "JobWatch", Watch)
    monkeypatch.setattr(slurm_watch, "watch_until_over", lambda watches: None)
    jobs = [SimpleNamespace(job_id=p.job_id) for p in plan.points]
    assert sweep.wait_for_sweep(plan.points, jobs) == 1
    out = capsys.readouterr().out
    assert "Slurm job 401 (point 1) ended in state CANCELLED by 0 without a result\n  logs: /logs/401.out" in out
    assert "sweep finished: 1 of 2 points completed" in out
    assert f"    0  COMPLETED       3.1416  {plan.points[0].run_dir}" in out
    assert f"    1  CANCELLED            -  {plan.points[1].run_dir}" in out


def test_array_parallelism_must_be_positive():
    with pytest.raises(UserError, match=re.escape("launcher.array_parallelism: expected a positive number of array "
                                                  "tasks running at once, or null (one job per sweep point), found 0")):
        compose_config(*ONE_CPU_RANK, "launcher.array_parallelism=0")


def run_cli(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    """`stgnn-train -m` with no Slurm on PATH: nothing here may reach sbatch."""
    return subprocess.run([sys.executable, "-m", "stgnn_launch.cli.train", "-m", *ONE_CPU_RANK, *overrides,
                           f"hydra.sweep.dir={tmp_path / 'sweep'}"], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env={**os.environ, "PATH": "/usr/bin:/bin"})


def test_dry_run_prints_the_array_and_leaves_nothing(tmp_path):
    proc = run_cli(tmp_path, "trainer.seed=0,1,2", "launcher.array_parallelism=2", "launcher.dry_run=true")
    assert proc.returncode == 0, proc.stderr
    assert "dry run: a sweep of 3 points as one job array of 3 tasks, at most 2 running at once; nothing submitted" \
        in proc.stdout
    assert "#SBATCH --array=0-2%2" in proc.stdout and "#SBATCH --job-name=stgnn-sweep" in proc.stdout
    assert f"#SBATCH --output={tmp_path}/sweep/slurm/%A_%a/%A_%a_0_log.out" in proc.stdout
    assert re.search(r"^\s+2  1 x 1 .*trainer\.seed=2", proc.stdout, re.M)
    assert not (tmp_path / "sweep").exists()


def test_a_bad_point_refuses_the_whole_sweep(tmp_path):
    proc = run_cli(tmp_path, "launcher.gpus_per_node=2", "gpus=2,3")
    assert proc.returncode == 2
    assert "stgnn-train: error: gpus: expected a multiple of launcher.gpus_per_node=2, found 3" in proc.stderr
    assert "submitted" not in proc.stdout and not (tmp_path / "sweep").exists()


# ---- on the local cluster ---------------------------------------------------------------------------



def stgnn_sweep(cluster, workdir: Path, *overrides: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stgnn_launch.cli.train", "-m", *ONE_CPU_RANK, *SHORT,
                           "trainer.seed=0,1", f"launcher.partition={cluster.partition}",
                           f"hydra.sweep.dir={workdir / 'sweep'}", "hydra.sweep.subdir=${hydra.job.num}", *overrides],
                          capture_output=True, text=True, timeout=timeout, cwd=workdir, env=cluster.env())


def check_results(manifest: dict) -> list[dict]:
    records = []
    for seed, point in enumerate(manifest["points"]):
        record = json.loads((Path(point["run_dir"]) / "results.json").read_text())
        assert record["config"]["trainer"]["seed"] == seed and record["world_size"] == 1
        assert record["config"]["run_dir"] == point["run_dir"] and len(record["epochs"]) == 1
        records.append(record)
    return records


@pytest.mark.slurm
def test_sweep_returns_while_its_jobs_run(slurm_cluster, workdir):
    proc = stgnn_sweep(slurm_cluster, workdir)
    states = {}
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    manifest = sweep.read_manifest(workdir / "sweep")
    ids = [p["job_id"] for p in manifest["points"]]
    for job_id in ids:  # right after the command returned
        states[job_id] = (job_info(job_id) or {}).get("JobState")
    assert {"PENDING", "RUNNING", "CONFIGURING"} & set(states.values()), states
    assert "submitted 2 Slurm jobs" in out and f"manifest: {workdir / 'sweep' / 'sweep.json'}" in out
    for point in manifest["points"]:
        assert re.search(rf"^ +{point['num']}  {point['job_id']} +1 x 1 +{re.escape(point['run_dir'])}$", out, re.M)
        assert Path(point["logs"][0]).parent == Path(point["run_dir"]) / "slurm" / point["job_id"]
    for job_id in ids:
        assert wait_for_job(job_id, timeout=300, poll_s=2) == "COMPLETED", states
    records = check_results(manifest)
    assert records[0]["test"]["avg"]["mae"] != records[1]["test"]["avg"]["mae"]  # two seeds, two runs
    # and stgnn-report collects the finished sweep: both points done, one CSV row each
    report = subprocess.run([sys.executable, "-m", "stgnn_launch.cli.report", str(workdir / "sweep")],
                            capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stdout + report.stderr
    rows = list(csv.DictReader(open(workdir / "sweep" / "report.csv")))
    assert len(rows) == 2 and {r["seed"] for r in rows} == {"0", "1"}
    assert (workdir / "sweep" / "report.md").is_file() and (workdir / "sweep" / "speedup.png").is_file()


@pytest.mark.slurm
def test_job_array_one_at_a_time_and_wait(slurm_cluster, workdir):
    """launcher.array_parallelism=1: one array, its tasks one after the other; launcher.wait=true blocks
    until both end and prints each point's state and test MAE."""
    proc = stgnn_sweep(slurm_cluster, workdir, "launcher.array_parallelism=1", "launcher.wait=true", timeout=480)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    manifest = sweep.read_manifest(workdir / "sweep")
    array = manifest["array_job_id"]
    assert manifest["array_parallelism"] == 1 and [p["job_id"] for p in manifest["points"]] == [f"{array}_0",
                                                                                                  f"{array}_1"]
    assert f"submitted Slurm job array {array}: 2 tasks, at most 1 running at once" in out
    assert "sweep finished: 2 of 2 points completed" in out
    for point, record in zip(manifest["points"], check_results(manifest)):
        mae = f"{record['test']['avg']['mae']:.4f}"
        assert re.search(rf"^ +{point['num']}  COMPLETED +{mae}  {re.escape(point['run_dir'])}$", out, re.M), out
        assert Path(point["logs"][0]).is_file()
    if slurm_cluster.accounting:  # the second task started only once the first had ended
        rows = subprocess.run(["sacct", "-n", "-X", "-P", "-j", array, "-o", "JobID,Start,End"], capture_output=True,
                              text=True, timeout=30, check=True).stdout.split()
        spans = dict((row.split("|")[0], row.split("|")[1:]) for row in rows)
        assert spans[f"{array}_1"][0] >= spans[f"{array}_0"][1], spans
