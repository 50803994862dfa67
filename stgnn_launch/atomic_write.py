"""Files that readers see whole or not at all: written beside the target, then renamed over it."""

from __future__ import annotations

import glob
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def temp_path_beside(path: Path) -> Path:
    """A hidden temporary name in the target's folder (a rename is atomic only within one filesystem),
    made unique per process so that ranks writing at once do not collide; host and pid in the name tell
    `remove_dead_temporaries` whose it is (a cache folder may be shared by the nodes of a cluster)."""
    return path.with_name(f".{path.name}.{_HOST}.{os.getpid()}.tmp")


_HOST = socket.gethostname().replace("/", "_")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_dead_temporaries(folder: Path) -> list[Path]:
    """Temporary files in `folder` left by a write on this host whose process is gone (killed, or failed
    without cleaning up): a 37 MB synthetic series, a 0-byte conversion. Others' live writes are kept."""
    removed = []
    if not Path(folder).is_dir():
        return removed
    for path in Path(folder).glob(f".*.{glob.escape(_HOST)}.*.tmp"):
        pid = path.name[:-len(".tmp")].rsplit(".", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


@contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path` in one rename, on an error it is
    removed and `path` keeps its previous content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_beside(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
