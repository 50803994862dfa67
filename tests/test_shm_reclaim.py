"""A rerun reclaims a dead run's /dev/shm segment (issue 22, point 9): its name no longer hashes the random
rendezvous port or torchrun's run id, so the next attempt in the same run directory finds and removes it."""

import os
from multiprocessing import shared_memory

from stgnn_launch.distributed import shared_series


def test_the_segment_name_is_the_runs_whatever_the_attempts_port(tmp_path, monkeypatch):
    names = set()
    for port, run_id, restart in (("29500", "a1", "0"), ("41234", "f9", "0"), ("29500", "a1", "2")):
        monkeypatch.setenv("MASTER_PORT", port)
        monkeypatch.setenv("TORCHELASTIC_RUN_ID", run_id)
        monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", restart)
        names.add(shared_series.segment_name(str(tmp_path / "run"), 0))
    assert len(names) == 1
    assert shared_series.segment_name(str(tmp_path / "run"), 1) not in names  # per node
    assert shared_series.segment_name(str(tmp_path / "other"), 0) not in names  # per run


def test_a_dead_runs_segment_is_reclaimed_by_the_rerun(tmp_path):
    name = shared_series.segment_name(str(tmp_path / "run"), 0)
    leftover = shared_memory.SharedMemory(name=name, create=True, size=1 << 20)  # a killed run's, never unlinked
    leftover.close()
    fresh = shared_series._create(name, 4096)  # the rerun's first rank
    try:
        assert fresh.size >= 4096 and os.path.exists(f"/dev/shm/{name}")
    finally:
        fresh.close()
        fresh.unlink()
    assert not os.path.exists(f"/dev/shm/{name}")
