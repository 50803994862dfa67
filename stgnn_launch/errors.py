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
