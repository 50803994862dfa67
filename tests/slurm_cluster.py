"""Pytest fixture and helpers for the local one-node Slurm cluster.

The cluster itself is managed by ``scripts/slurm/local-cluster.sh`` (munged, slurmctld and
slurmd, all state under ``$STGNN_SLURM_DIR``, default ``/tmp/stgnn-slurm``). This module:

* ``slurm_cluster``: session-scoped fixture. Reuses a cluster that already answers (an
  external one named by ``$SLURM_CONF``, or ours when it is up), otherwise runs
  ``local-cluster.sh start`` (which installs the Debian packages when needed; needs root)
  with accounting (slurmdbd + MariaDB, so that ``sacct`` and submitit see real job states)
  unless ``STGNN_SLURM_ACCOUNTING`` is set (``STGNN_SLURM_ACCOUNTING=0``: without).
  It sets ``os.environ["SLURM_CONF"]`` so that every ``sbatch``/``srun``/submitit call of
  the session talks to that cluster, and yields a :class:`SlurmCluster`. A cluster that a
  test session started is stopped when the last test session using it ends (unless
  ``STGNN_SLURM_KEEP=1``); one that was started by hand is left alone.
* ``wait_for_job``: polls ``scontrol show job`` until a job reaches a final state, and
  returns that state (from ``sacct`` once slurmctld has forgotten the job, where there is
  accounting).

When Slurm cannot be started, the fixture skips with the reason and the last lines of the
daemon logs. Where the Slurm tests must run (``CI`` set to a true value, or
``STGNN_REQUIRE_SLURM=1``) it fails instead, so that a broken cluster is never reported as
a quiet skip; ``STGNN_REQUIRE_SLURM=0`` turns that off.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
CLUSTER_SCRIPT = REPO_ROOT / "scripts" / "slurm" / "local-cluster.sh"
DEFAULT_STATE_DIR = Path("/tmp/stgnn-slurm")

#: Job states after which a job will not run again (``scontrol`` spelling).
FINAL_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "TIMEOUT",
        "CANCELLED",
        "NODE_FAIL",
        "PREEMPTED",
        "BOOT_FAIL",
        "DEADLINE",
        "OUT_OF_MEMORY",
        "REVOKED",
        "SPECIAL_EXIT",
    }
)

_START_TIMEOUT_S = 900  # includes apt-get update/install on a fresh machine
_STOP_TIMEOUT_S = 120


@dataclass(frozen=True)
class SlurmCluster:
    """What the tests need to know about the running cluster."""

    conf: Path
    state_dir: Path
    partition: str
    node: str
    started_here: bool
    version: str = ""
    log_dir: Path = field(default=Path("/nonexistent"))
    #: slurmdbd accounting is on, so ``sacct`` works (local cluster: STGNN_SLURM_ACCOUNTING=1).
    accounting: bool = False

    def env(self, extra: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
        """A copy of ``os.environ`` pointing Slurm clients at this cluster."""
        env = dict(os.environ)
        env["SLURM_CONF"] = str(self.conf)
        if extra:
            env.update(extra)
        return env

    def logs_tail(self, lines: int = 30) -> str:
        return _logs_tail(self.log_dir, lines)


def state_dir() -> Path:
    return Path(os.environ.get("STGNN_SLURM_DIR") or DEFAULT_STATE_DIR)


def _truthy(value: Optional[str]) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def slurm_required() -> bool:
    """Whether an unavailable cluster must fail the tests rather than skip them."""
    explicit = os.environ.get("STGNN_REQUIRE_SLURM")
    if explicit is not None and explicit.strip() != "":
        return _truthy(explicit)
    return _truthy(os.environ.get("CI"))


def _logs_tail(log_dir: Path, lines: int = 30) -> str:
    parts = []
    for name in ("munged.log", "mariadbd.log", "slurmdbd.log", "slurmctld.log", "slurmd.log"):
        path = log_dir / name
        try:
            text = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        if text:
            parts.append(f"----- {path} (last {lines} lines) -----")
            parts.extend(text[-lines:])
    return "\n".join(parts)


def _run(cmd, env=None, timeout=30.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False
    )


def _sinfo_ok(env: Mapping[str, str]) -> bool:
    """The controller answers and at least one node can run jobs."""
    if shutil.which("sinfo") is None:
        return False
    try:
        proc = _run(["sinfo", "-h", "-N", "-o", "%T"], env=dict(env), timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    if proc.returncode != 0:
        return False
    states = {line.strip().rstrip("*~#$@^-!%") for line in proc.stdout.splitlines() if line.strip()}
    return bool(states & {"idle", "mixed", "allocated", "completing"})


def _default_partition(env: Mapping[str, str]) -> str:
    try:
        proc = _run(["sinfo", "-h", "-o", "%P"], env=dict(env), timeout=20)
        for line in proc.stdout.split():
            if line.endswith("*"):
                return line.rstrip("*")
        if proc.stdout.split():
            return proc.stdout.split()[0]
    except (OSError, subprocess.TimeoutExpired):
        pass
    return os.environ.get("STGNN_SLURM_PARTITION", "debug")


def _first_node(env: Mapping[str, str], partition: str) -> str:
    try:
        proc = _run(["sinfo", "-h", "-N", "-p", partition, "-o", "%N"], env=dict(env), timeout=20)
        if proc.stdout.split():
            return proc.stdout.split()[0]
    except (OSError, subprocess.TimeoutExpired):
        pass
    return ""


def _has_accounting(env: Mapping[str, str]) -> bool:
    try:
        out = _run(["scontrol", "show", "config"], env=dict(env), timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return bool(re.search(r"^AccountingStorageType\s*=\s*accounting_storage/slurmdbd", out, re.M))


def _slurm_version(env: Mapping[str, str]) -> str:
    try:
        return _run(["sinfo", "-V"], env=dict(env), timeout=20).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def _pid_running(pidfile: Path) -> bool:
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, 0)
    except PermissionError:  # alive, owned by root
        return True
    except (OSError, ValueError):
        return False
    return True


class SlurmUnavailable(RuntimeError):
    pass


def _script(action: str, timeout: float) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.setdefault("STGNN_SLURM_DIR", str(state_dir()))
    env["DEBIAN_FRONTEND"] = "noninteractive"
    # Accounting by default, so that sacct works and submitit sees the states Slurm gives jobs.
    env.setdefault("STGNN_SLURM_ACCOUNTING", "1")
    # The script exports the right SLURM_CONF itself; a stale one must not leak into it.
    env.pop("SLURM_CONF", None)
    return _run(["bash", str(CLUSTER_SCRIPT), action], env=env, timeout=timeout)


def start_cluster() -> SlurmCluster:
    """Return a running cluster, starting the local one if needed.

    Raises :class:`SlurmUnavailable` with a readable reason when that is impossible.
    """
    sdir = state_dir()
    own_conf = sdir / "etc" / "slurm.conf"
    external = os.environ.get("SLURM_CONF")
    if external and Path(external) != own_conf:
        # Someone pointed us at another cluster on purpose: use it if it answers.
        env = dict(os.environ)
        if _sinfo_ok(env):
            partition = _default_partition(env)
            return SlurmCluster(
                conf=Path(external),
                state_dir=Path(external).parent,
                partition=partition,
                node=_first_node(env, partition),
                started_here=False,
                version=_slurm_version(env),
                accounting=_has_accounting(env),
            )
        raise SlurmUnavailable(f"SLURM_CONF={external} is set but sinfo does not show a usable node")

    own_env = dict(os.environ, SLURM_CONF=str(own_conf))
    # (sinfo spends MessageTimeout retrying a controller that is not there: check the pid first)
    already_up = own_conf.exists() and _pid_running(sdir / "run" / "slurmctld.pid") and _sinfo_ok(own_env)
    if not already_up:
        if not CLUSTER_SCRIPT.exists():
            raise SlurmUnavailable(f"{CLUSTER_SCRIPT} is missing")
        if os.geteuid() != 0:
            raise SlurmUnavailable(
                "the local cluster is not running and starting it needs root "
                f"(run `sudo {CLUSTER_SCRIPT.relative_to(REPO_ROOT)} start` first)"
            )
        if shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
            raise SlurmUnavailable("Slurm is not installed and apt-get is not available to install it")
        started = time.monotonic()
        try:
            proc = _script("start", timeout=_START_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
            raise SlurmUnavailable(
                f"`local-cluster.sh start` did not finish within {_START_TIMEOUT_S}s\n"
                f"{err}\n{_logs_tail(sdir / 'log')}"
            ) from exc
        if proc.returncode != 0:
            out = "\n".join((proc.stdout + "\n" + proc.stderr).strip().splitlines()[-80:])
            raise SlurmUnavailable(f"`local-cluster.sh start` exited with {proc.returncode}:\n{out}")
        if not _sinfo_ok(own_env):
            raise SlurmUnavailable(
                "`local-cluster.sh start` succeeded but sinfo shows no usable node\n" + _logs_tail(sdir / "log")
            )
        print(f"[slurm_cluster] local cluster started in {time.monotonic() - started:.1f}s")
    partition = _default_partition(own_env)
    return SlurmCluster(
        conf=own_conf,
        state_dir=sdir,
        partition=partition,
        node=_first_node(own_env, partition),
        started_here=not already_up,
        version=_slurm_version(own_env),
        log_dir=sdir / "log",
        accounting=_has_accounting(own_env),
    )


def stop_cluster() -> subprocess.CompletedProcess:
    return _script("stop", timeout=_STOP_TIMEOUT_S)


# Several pytest sessions may share the local cluster (developers running the suite side by
# side). Each registers its pid under <state>/pytest-sessions; the session that started the
# cluster leaves a marker file, and whichever test session ends last with the marker still
# there stops it. A cluster started by hand (no marker) is never stopped by the tests.
_MARKER = "started-by-pytest"


@contextlib.contextmanager
def _sessions_lock(sdir: Path) -> Iterator[None]:
    try:
        fd = os.open(f"{sdir}.pytest.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _live_sessions(sdir: Path) -> List[int]:
    alive = []
    for entry in (sdir / "pytest-sessions").glob("*"):
        try:
            pid = int(entry.name)
            os.kill(pid, 0)
        except ValueError:
            continue
        except ProcessLookupError:
            entry.unlink(missing_ok=True)
            continue
        except PermissionError:
            pass
        alive.append(pid)
    return alive


def _register_session(sdir: Path, register: bool) -> None:
    path = sdir / "pytest-sessions" / str(os.getpid())
    try:
        if register:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A running one-node Slurm cluster; ``SLURM_CONF`` is exported for the session."""
    sdir = state_dir()
    error: Optional[SlurmUnavailable] = None
    with _sessions_lock(sdir):
        try:
            cluster = start_cluster()
        except SlurmUnavailable as exc:
            error = exc
        else:
            local = cluster.state_dir == sdir
            if local:
                if cluster.started_here:
                    with contextlib.suppress(OSError):
                        (sdir / _MARKER).write_text(f"{os.getpid()}\n")
                _register_session(sdir, True)
    if error is not None:
        message = f"Slurm could not be started: {error}"
        if slurm_required():
            pytest.fail(message + "\n(STGNN_REQUIRE_SLURM/CI is set, so this is an error, not a skip)")
        pytest.skip(message)
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    try:
        yield cluster
    finally:
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
        if local:
            with _sessions_lock(sdir):
                _register_session(sdir, False)
                others = [pid for pid in _live_sessions(sdir) if pid != os.getpid()]
                ours = (sdir / _MARKER).exists()
                if ours and not others and not _truthy(os.environ.get("STGNN_SLURM_KEEP")):
                    proc = stop_cluster()
                    if proc.returncode != 0:
                        print(f"[slurm_cluster] stop failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


# ----------------------------------------------------------------------------------------
# Job helpers: scontrol (finished jobs are kept for MinJobAge=300s), then sacct where there is one

_KV = re.compile(r"(\w+(?:/\w+)?)=(\S*)")


def job_info(job_id: str, env: Optional[Mapping[str, str]] = None) -> Optional[Dict[str, str]]:
    """``scontrol show job`` as a dict, or None once the controller has forgotten the job."""
    proc = _run(["scontrol", "-o", "show", "job", str(job_id)], env=dict(env) if env else None, timeout=30)
    if proc.returncode != 0:
        if "Invalid job id" in proc.stderr:
            return None
        raise RuntimeError(f"scontrol show job {job_id} failed ({proc.returncode}): {proc.stderr.strip()}")
    line = proc.stdout.strip().splitlines()[0] if proc.stdout.strip() else ""
    return dict(_KV.findall(line))


def job_state(job_id: str, env: Optional[Mapping[str, str]] = None) -> Optional[str]:
    info = job_info(job_id, env)
    if info is None:
        return None
    return info.get("JobState")


def sacct_state(job_id: str, env: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """The job's state in the accounting database (its latest run), or None without one."""
    try:
        proc = _run(["sacct", "-n", "-X", "-P", "-j", str(job_id), "-o", "State"],
                    env=dict(env) if env else None, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = [line for line in proc.stdout.splitlines() if line.strip()] if proc.returncode == 0 else []
    return lines[-1].split()[0] if lines else None  # e.g. "CANCELLED by 0" -> CANCELLED


def wait_for_job(
    job_id: str, timeout: float = 120.0, poll_s: float = 1.0, env: Optional[Mapping[str, str]] = None
) -> str:
    """Poll until ``job_id`` reaches a final state and return it (e.g. ``COMPLETED``).

    Raises ``TimeoutError`` if it is still pending/running after ``timeout`` seconds, and
    ``RuntimeError`` if neither the controller (it forgets jobs after MinJobAge) nor the
    accounting database (where there is one) knows the job.
    """
    deadline = time.monotonic() + timeout
    last: Optional[Dict[str, str]] = None
    while True:
        info = job_info(job_id, env)
        if info is None:
            if last is not None and last.get("JobState") in FINAL_STATES:
                return last["JobState"]
            recorded = sacct_state(job_id, env)
            if recorded in FINAL_STATES:
                return recorded
            raise RuntimeError(
                f"job {job_id} is unknown to slurmctld (last seen: {last.get('JobState') if last else 'never'}; "
                f"accounting: {recorded or 'none'}); finished jobs are only kept for MinJobAge seconds"
            )
        last = info
        state = info.get("JobState", "")
        if state in FINAL_STATES:
            return state
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"job {job_id} still {state} after {timeout:.0f}s (reason: {info.get('Reason')}, "
                f"node: {info.get('NodeList')})"
            )
        time.sleep(poll_s)


def start_requeued_now(job_id: str, *extra: str, env: Optional[Mapping[str, str]] = None) -> None:
    """Lift the 120 s hold Slurm puts on a requeued job (BeginTime), as an admin would with
    `scontrol update StartTime=now`, but not within the second of the requeue: slurmd revokes the job's
    earlier credential with a timestamp in whole seconds, and a start in that same second is killed
    ("Job credential revoked", the job ends FAILED). The hold exists for this; 2 s is enough here."""
    time.sleep(2)
    proc = _run(["scontrol", "update", f"JobId={job_id}", "StartTime=now", *extra], env=dict(env) if env else None,
                timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"scontrol update JobId={job_id} StartTime=now failed: {proc.stderr.strip()}")


def submit(args, env: Optional[Mapping[str, str]] = None) -> str:
    """``sbatch --parsable ARGS``; returns the job id."""
    proc = _run(["sbatch", "--parsable", *map(str, args)], env=dict(env) if env else None, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"sbatch {' '.join(map(str, args))} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout.strip().split(";")[0]


@pytest.fixture
def workdir(slurm_cluster, tmp_path):
    """The test's folder, where its jobs run; any of them still queued or running at the end is cancelled
    (a failed test must not leave jobs holding the node's cores)."""
    yield tmp_path
    proc = subprocess.run(["squeue", "-h", "-o", "%A %Z"], capture_output=True, text=True, timeout=30,
                          env=slurm_cluster.env())
    for line in proc.stdout.splitlines():
        job_id, _, folder = line.strip().partition(" ")
        if folder.startswith(str(tmp_path)):
            subprocess.run(["scancel", job_id], timeout=30, check=False, env=slurm_cluster.env())
