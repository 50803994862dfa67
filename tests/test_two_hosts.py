"""Two hosts for real: scripts/slurm/train.sbatch across two network namespaces joined by a veth pair.

Each "host" is a network namespace with its own hostname (UTS namespace), its own /etc/hosts and its own
/dev/shm (a private mount namespace: `ip netns exec` alone would share the root's /dev/shm, so the two
hosts' node-shared series could meet). The shipped template runs on the first host with a stand-in for
`srun`, which runs the node task there (node 0) and hands its command and environment to the test, which
starts the same on the second host (node 1): torchrun with 2 ranks per host and a c10d
rendezvous on the first. Every process runs inside the namespaces under `timeout`; the namespaces (and
with them the veth pair and the private mounts) are removed afterwards, also on failure.

Traffic stays on the veth pair (10.231.0.1 and .2) and on each namespace's own loopback: nothing here
connects from the root namespace to those addresses.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import REPO, TINY, compose_config, is_rank_process
from stgnn_launch.errors import UserError
from stgnn_launch.launch.local import interface_address
from stgnn_launch.launch.slurm_submit import job_for
from stgnn_launch.launch.torchrun import build_torchrun_cmd, socket_env

TEMPLATE = REPO / "scripts" / "slurm" / "train.sbatch"
SUBNET = "10.231.0"
IFNAME = "stgnn0"  # the veth end's name inside each namespace (the same on both, like ib0 on a cluster)
RDZV_PORT = 29611
RUN_TIMEOUT_S = 420  # bound on every host process (a hang fails the test instead of stalling it)
# Big enough that an epoch lasts seconds, so that a kill sent when epoch 1's checkpoint appears lands in
# epoch 2; small enough for 4 ranks on 2 cores.
OVERRIDES = (*TINY, "dataset.num_nodes=20", "dataset.num_steps=4000", "batching=dist_index",
             "trainer.max_epochs=2", "trainer.num_threads=1")

SRUN_STUB = """#!/bin/bash
# srun stand-in: run the node task on this host, and leave its command and environment for the test,
# which starts the same on the other host (what srun does on every node of the allocation).
while [[ $# -gt 0 && "$1" == -* ]]; do shift; done
env -0 >"$STGNN_TEST_TASK.env"
printf '%s\\0' "$@" >"$STGNN_TEST_TASK.tmp" && mv "$STGNN_TEST_TASK.tmp" "$STGNN_TEST_TASK.argv"
SLURM_NODEID=0 exec "$@"
"""


@dataclass
class Host:
    name: str  # hostname
    netns: str
    addr: str  # on the veth pair


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


def _netns_pids(netns: str) -> list[int]:
    proc = _run("ip", "netns", "pids", netns)
    return [int(p) for p in proc.stdout.split()] if proc.returncode == 0 else []


def _remove_namespace(netns: str) -> None:
    for _ in range(3):  # whatever still runs in it (a rank torchrun left behind), then the namespace
        pids = _netns_pids(netns)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if pids:
            time.sleep(0.5)
    _run("ip", "netns", "delete", netns)  # its veth end goes with it, and the peer with that


@pytest.fixture(scope="module")
def hosts():
    if os.geteuid() != 0:
        pytest.skip("two-host test: needs root (network, UTS and mount namespaces)")
    missing = [tool for tool in ("ip", "unshare", "timeout", "mount") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"two-host test: {', '.join(missing)} not found")
    tag = f"stgnn{os.getpid() % 100000}"
    pair = [Host("host-a", f"{tag}-a", f"{SUBNET}.1"), Host("host-b", f"{tag}-b", f"{SUBNET}.2")]
    created: list[str] = []
    try:
        for host in pair:
            proc = _run("ip", "netns", "add", host.netns)
            if proc.returncode != 0:
                pytest.skip(f"two-host test: `ip netns add` failed: {proc.stderr.strip()}")
            created.append(host.netns)
        veth = [f"{tag}a", f"{tag}b"]  # temporary names in the root namespace (at most 15 characters)
        steps = [("ip", "link", "add", veth[0], "type", "veth", "peer", "name", veth[1])]
        for host, end in zip(pair, veth):
            steps += [("ip", "link", "set", end, "netns", host.netns),
                      ("ip", "-n", host.netns, "link", "set", end, "name", IFNAME),
                      ("ip", "-n", host.netns, "addr", "add", f"{host.addr}/24", "dev", IFNAME),
                      ("ip", "-n", host.netns, "link", "set", IFNAME, "up"),
                      ("ip", "-n", host.netns, "link", "set", "lo", "up")]
        for step in steps:
            proc = _run(*step)
            if proc.returncode != 0:
                pytest.skip(f"two-host test: `{' '.join(step)}` failed: {proc.stderr.strip()}")
        yield pair
    finally:
        for netns in created:
            _remove_namespace(netns)


class Cluster:
    """Starts commands as the hosts, and train.sbatch as Slurm would across them."""

    jobs = 0  # job ids (and rendezvous ports) differ between the jobs of this module

    def __init__(self, hosts: list[Host], root: Path) -> None:
        self.hosts, self.root = hosts, root
        self.stubs = root / "bin"  # the stand-ins, first on PATH
        self.stubs.mkdir()
        (self.stubs / "srun").write_text(SRUN_STUB)
        (self.stubs / "srun").chmod(0o755)
        self.procs: list[subprocess.Popen] = []

    def hosts_file(self, host: Host, loopback_site: bool) -> Path:
        """Both names at their veth addresses; or, as at sites where a host's own name resolves to
        loopback (Debian's 127.0.1.1 line), its own name at 127.0.1.1 and the other's at its address."""
        lines = ["127.0.0.1 localhost"]
        for other in self.hosts:
            own = other is host and loopback_site
            lines.append(f"{'127.0.1.1' if own else other.addr} {other.name}")
        path = self.root / f"hosts.{host.name}.{'loopback' if loopback_site else 'veth'}"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self, host: Host, argv: list[str], env: dict[str, str], log: Path, loopback_site: bool = False
              ) -> subprocess.Popen:
        """`argv` as `host`: its network namespace, hostname, /etc/hosts and a private /dev/shm."""
        setup = (f"hostname {host.name} && mount --bind {self.hosts_file(host, loopback_site)} /etc/hosts && "
                 'mount -t tmpfs -o size=512m,mode=1777 stgnn-shm /dev/shm && exec "$@"')
        cmd = ["timeout", "-k", "10", str(RUN_TIMEOUT_S), "ip", "netns", "exec", host.netns,
               "unshare", "--mount", "--uts", "--propagation", "private", "bash", "-c", setup, host.name, *argv]
        with log.open("w") as out:
            proc = subprocess.Popen(cmd, env=env, cwd=self.root, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        self.procs.append(proc)
        return proc

    def sbatch(self, name: str, nodes: int, ranks_per_node: int, *overrides: str, max_restarts: int = 0,
               extra_env: dict[str, str] | None = None, loopback_site: bool = False) -> "Job":
        """train.sbatch as Slurm would run it on `nodes` hosts: the batch script on the first host, the
        node task (from the srun stand-in) on the second."""
        job_dir = self.root / name
        job_dir.mkdir()
        Cluster.jobs += 1
        job_id = str(1000 + Cluster.jobs)
        env = {**os.environ, "PATH": f"{self.stubs}:{os.environ['PATH']}", "SLURM_JOB_ID": job_id,
               "SLURM_JOB_NUM_NODES": str(nodes),
               "SLURM_JOB_NODELIST": ",".join(h.name for h in self.hosts[:nodes]),
               "STGNN_PYTHON": sys.executable, "STGNN_CPU": "1", "STGNN_RANKS_PER_NODE": str(ranks_per_node),
               "STGNN_MAX_RESTARTS": str(max_restarts), "STGNN_RDZV_PORT": str(RDZV_PORT + Cluster.jobs),
               "STGNN_TEST_TASK": str(job_dir / "task"), **(extra_env or {})}
        run_dir = job_dir / "run"
        argv = ["bash", str(TEMPLATE), *overrides, f"hydra.run.dir={run_dir}"]
        job = Job(run_dir, job_dir, [self.start(self.hosts[0], argv, env, job_dir / "host-a.log", loopback_site)])
        if nodes == 2:
            argv_file = job_dir / "task.argv"
            deadline = time.monotonic() + 120
            while not argv_file.exists() and job.procs[0].poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            assert argv_file.exists(), f"the batch script started no node task:\n{job.log()}"
            task = argv_file.read_bytes().split(b"\0")[:-1]
            task_env = dict(entry.split(b"=", 1) for entry in (job_dir / "task.env").read_bytes().split(b"\0") if
                            b"=" in entry)
            task_env_str = {**{k.decode(): v.decode() for k, v in task_env.items()}, "SLURM_NODEID": "1"}
            job.procs.append(self.start(self.hosts[1], [t.decode() for t in task], task_env_str,
                                        job_dir / "host-b.log", loopback_site))
        return job

    def ranks_on(self, host: Host, run_dir: Path) -> list[int]:
        """The rank processes (not torchrun) of this run inside the host's network namespace."""
        pids = []
        for pid in _netns_pids(host.netns):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if is_rank_process(cmdline, run_dir):
                pids.append(pid)
        return pids

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()  # `timeout` itself; whatever it leaves goes with the namespace's pids
                proc.wait()


@dataclass
class Job:
    run_dir: Path
    job_dir: Path
    procs: list[subprocess.Popen]

    def log(self) -> str:
        return "\n".join(f"---- {p.name} ----\n{p.read_text(errors='replace')[-6000:]}"
                         for p in sorted(self.job_dir.glob("host-*.log")))

    def wait(self) -> list[int]:
        codes = [proc.wait() for proc in self.procs]  # each bounded by its `timeout`
        assert 124 not in codes and -9 not in codes, f"a host ran into its timeout:\n{self.log()}"
        return codes

    def wait_for_checkpoint(self) -> None:
        last = self.run_dir / "checkpoints" / "last.pt"
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not last.exists() and all(p.poll() is None for p in self.procs) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert last.exists(), self.log()


@pytest.fixture
def run(hosts, tmp_path):
    cluster = Cluster(hosts, tmp_path)
    yield cluster
    cluster.stop_all()


def assert_same_metrics(got: dict, want: dict) -> None:
    for horizon in ("3", "6", "12", "avg"):
        for name in ("mae", "rmse", "mape"):
            assert got[horizon][name] == pytest.approx(want[horizon][name], abs=1e-6), (horizon, name)


@pytest.fixture(scope="module")
def one_host_reference(tmp_path_factory, hosts):
    """The same world size (4 ranks) on one host, through the same template: the numbers to match."""
    cluster = Cluster(hosts, tmp_path_factory.mktemp("one-host"))
    try:
        job = cluster.sbatch("ref", 1, 4, *OVERRIDES)
        assert job.wait() == [0], job.log()
    finally:
        cluster.stop_all()
    record = json.loads((job.run_dir / "results.json").read_text())
    assert record["world_size"] == 4
    return record


@pytest.mark.slow
def test_two_hosts_train_like_one_host_where_hostnames_resolve_to_loopback(run, one_host_reference):
    """Each host's own name at 127.0.1.1: with STGNN_SOCKET_IFNAME, gloo binds the veth and each torchrun
    announces its veth address, so 2 hosts x 2 ranks train to the numbers of 1 host x 4 ranks."""
    job = run.sbatch("loopback", 2, 2, *OVERRIDES, extra_env={"STGNN_SOCKET_IFNAME": IFNAME}, loopback_site=True)
    assert job.wait() == [0, 0], job.log()
    record = json.loads((job.run_dir / "results.json").read_text())
    assert record["world_size"] == 4 and record["batching"] == "dist_index"
    assert [e["epoch"] for e in record["epochs"]] == [1, 2]
    log = job.log()
    assert "rendezvous host-a:" in log
    assert_same_metrics(record["test"], one_host_reference["test"])


@pytest.mark.slow
def test_a_killed_rank_on_one_host_restarts_both_and_the_run_finishes(run, one_host_reference):
    job = run.sbatch("restart", 2, 2, *OVERRIDES, max_restarts=1)
    job.wait_for_checkpoint()
    victims = run.ranks_on(run.hosts[1], job.run_dir)
    assert len(victims) == 2, job.log()
    os.kill(victims[0], signal.SIGKILL)
    assert job.wait() == [0, 0], job.log()
    log = job.log()
    resumed = re.findall(r"resumed from \S+ (?:after|at the end of|at) epoch (\d+)", log)
    assert resumed and int(resumed[0]) in (1, 2), log  # rank 0 (host A) resumed: both hosts restarted
    record = json.loads((job.run_dir / "results.json").read_text())
    assert [e["epoch"] for e in record["epochs"]] == [1, 2] and record["world_size"] == 4
    assert_same_metrics(record["test"], one_host_reference["test"])


@pytest.mark.slow
def test_with_no_restarts_left_both_hosts_exit_instead_of_hanging(run):
    job = run.sbatch("norestart", 2, 2, *OVERRIDES, max_restarts=0)
    job.wait_for_checkpoint()
    victims = run.ranks_on(run.hosts[1], job.run_dir)
    assert len(victims) == 2, job.log()
    os.kill(victims[0], signal.SIGKILL)
    codes = job.wait()  # a hang would run into `timeout` (124), far below the 30-minute gloo timeout
    assert all(code != 0 for code in codes), (codes, job.log())
    assert not (job.run_dir / "results.json").exists()
    time.sleep(2)
    assert [run.ranks_on(host, job.run_dir) for host in run.hosts] == [[], []], "ranks left behind"


# ---- the launcher keys for sites whose hostnames resolve to loopback (no namespaces needed) ----

def test_torchrun_command_carries_local_addr_and_rdzv_conf_before_the_worker():
    cmd = build_torchrun_cmd(nnodes=2, nproc_per_node=2, run_dir="/r", rdzv_endpoint="host-a:29500", rdzv_id="7",
                             local_addr="10.231.0.2", rdzv_conf="join_timeout=900,read_timeout=120", python="py")
    worker = cmd.index("-m", 2)
    assert cmd.index("--rdzv_conf=join_timeout=900,read_timeout=120") < worker
    assert cmd.index("--local_addr=10.231.0.2") < worker
    assert cmd[worker:] == ["-m", "stgnn_launch.train.worker", "/r"]
    plain = build_torchrun_cmd(nnodes=2, nproc_per_node=2, run_dir="/r", rdzv_endpoint="h:1", python="py")
    assert not any(c.startswith(("--local_addr", "--rdzv_conf")) for c in plain)


def test_socket_ifname_names_the_interface_for_gloo_and_nccl_and_gives_this_nodes_address():
    assert socket_env("ib0") == {"GLOO_SOCKET_IFNAME": "ib0", "NCCL_SOCKET_IFNAME": "ib0"}
    assert socket_env(None) == {}
    assert interface_address("lo") == "127.0.0.1"
    with pytest.raises(UserError, match=r"launcher.socket_ifname: expected a network interface .* found 'nosuch0'"):
        interface_address("nosuch0")


def test_slurm_job_takes_the_keys_from_the_config():
    cfg = compose_config("launcher=slurm", "gpus=4", "launcher.gpus_per_node=2", "launcher.cpu=true",
                         "launcher.rdzv_conf='join_timeout=900,read_timeout=120'", "launcher.local_addr=node7-ib",
                         "launcher.socket_ifname=ib0")
    job = job_for(cfg, Path("/runs/a"))
    assert job.socket_ifname == "ib0"
    cmd = job.command(2, "n1", "123")
    assert "--rdzv_conf=join_timeout=900,read_timeout=120" in cmd and "--local_addr=node7-ib" in cmd
    assert "--local_addr=10.0.0.7" in job.command(2, "n1", "123", local_addr="10.0.0.7")  # the node's own
    with pytest.raises(Exception, match="launcher.rdzv_conf: expected key=value pairs"):
        compose_config("launcher.rdzv_conf='join_timeout'")
