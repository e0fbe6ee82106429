"""The one exception type the command-line scripts turn into a clean message and exit code 2."""


class UserError(Exception):
    """A problem with the user's input (path, flag, file) that a message can explain."""
