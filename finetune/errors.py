"""The one exception type for mistakes a user can fix: the entry point prints it as one line, exit 2."""

from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(Exception):
    """A problem in a recipe, a flag or the input data, with its fix in the message."""

    exit_code = 2


def run_command(main: Callable[[list[str]], int]) -> int:
    """`main(sys.argv[1:])` for an entry script: a UserError becomes `error: ...` on stderr and exit 2."""
    try:
        return main(sys.argv[1:])
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
