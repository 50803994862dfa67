"""One exception type for every mistake a user can make (a file, a config value, a cluster setting).

The console scripts catch it, print its message on one line and exit with status 2, so bad input never
ends in a traceback. Messages name the thing, what was expected and what was found.
"""


class UserError(Exception):
    """Bad input from the user: the message alone must tell them what to fix."""


def expect(condition: bool, thing: str, expected: str, found: object) -> None:
    """Raise a UserError of the standard shape unless `condition` holds."""
    if not condition:
        raise UserError(f"{thing}: expected {expected}, found {found!r}")


NO_SPACE_ERRNOS = (28, 122)  # ENOSPC, EDQUOT (Linux)


class DiskFull(UserError):
    """A write ran out of space: the message names the file, the space it needed and what was free."""


def free_bytes(path) -> int | None:
    """Free bytes on the file system holding `path` (its nearest existing parent), or None if unknown."""
    import shutil
    from pathlib import Path

    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def disk_full(path, needed: int | None, err: BaseException | None = None) -> DiskFull:
    """The one-line error for a write of `needed` bytes (None: unknown) to `path` that found no space."""
    free = free_bytes(path)
    need = f"about {needed / 2**20:.1f} MiB free" if needed is not None else "free space"
    found = f"{free / 2**20:.1f} MiB free" if free is not None else "the file system full"
    why = f" ({err.strerror})" if isinstance(err, OSError) and err.strerror else ""
    return DiskFull(f"{path}: expected {need} on its file system to write it, found {found}{why}")


def is_disk_full(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in NO_SPACE_ERRNOS
