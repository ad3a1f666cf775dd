"""User-facing errors: the CLI prints them as one line and exits with status 2."""


class UsageError(Exception):
    """Bad input from the user: a flag, a file, a budget or a URI. The message says what was expected."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the signal lands, so that it cancels exactly as Ctrl-C does (runs marked KILLED,
    Ray shut down); the CLI exits 143 for it, 130 for Ctrl-C."""


signals_received: list[int] = []  # a library on the way up (Ray Tune) may re-raise a plain KeyboardInterrupt


def raise_terminated(signum, frame):
    signals_received.append(signum)
    raise Terminated
