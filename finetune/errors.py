"""The one exception type for mistakes a user can fix: the entry point prints it as one line, exit 2."""


class UserError(Exception):
    """A problem in a recipe, a flag or the input data, with its fix in the message."""

    exit_code = 2
