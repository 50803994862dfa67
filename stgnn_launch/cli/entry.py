"""How every console script ends: bad input is one line on stderr and exit status 2, never a traceback.

`run_command(prog, body)` runs a command's body and turns its outcome into the exit status: the body's
own code, a UserError's one line ("PROG: error: ...", status 2 or the error's `exit_code`), an `Exit`
(a line of the command's own, e.g. a preempted run's, with its status) or Ctrl-C ("PROG: interrupted",
130). Hydra's apps call it inside their `@hydra.main` function, which must not see the exception.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from stgnn_launch.errors import UserError

INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C


class Exit(Exception):
    """End the command with `message` (one line, after the program's name) and status `code`."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def run_command(prog: str, body: Callable[[], int | None], *,
                errors: tuple[type[BaseException], ...] = (UserError,),
                on_error: Callable[[BaseException], None] | None = None) -> int:
    """The exit status of `body()`; `errors` (UserError, and e.g. OSError for a file tool) print as one
    line, then `on_error` cleans up after them (a run directory left empty)."""
    try:
        return body() or 0
    except Exit as stop:
        print(f"{prog}: {stop}", file=sys.stderr)
        return stop.code
    except errors as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        if on_error is not None:
            on_error(err)
        return getattr(err, "exit_code", 2)  # 3: stgnn-train's run that does not fit the node
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return INTERRUPTED


def start_hydra_app(prog: str, app: Callable[[], None]) -> None:
    """A Hydra app's start: the schema registered, and a choice key's bad value on the command line refused in
    one line before Hydra composes (Hydra's own report of it takes several lines and exits 1)."""
    from stgnn_launch.config.load import check_choices
    from stgnn_launch.config.schema import register_configs

    register_configs()
    code = run_command(prog, lambda: check_choices(sys.argv[1:]))
    if code:
        sys.exit(code)
    app()
