"""User-facing errors: the CLI prints them as one line and exits with status 2."""


class UsageError(Exception):
    """Bad input from the user: a flag, a file, a budget or a URI. The message says what was expected."""
