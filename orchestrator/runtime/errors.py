"""User-facing errors (the CLI prints them as one line and exits with status 2), and cancellation by signal."""
import os
import signal


class UsageError(Exception):
    """Bad input from the user: a flag, a file, a budget or a URI. The message says what was expected."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the signal lands, so that it cancels exactly as Ctrl-C does (runs marked KILLED,
    Ray shut down); the CLI exits 143 for it, 130 for Ctrl-C."""


signals_received: list[int] = []  # a library on the way up (Ray Tune) may re-raise a plain KeyboardInterrupt


def cancel(signum, frame):
    """SIGINT or SIGTERM: cancel cleanly (an exception where the signal lands, so that every `except` and
    `finally` on the way up runs). A second signal while that cleanup runs forces the exit at once."""
    signals_received.append(signum)
    signal.signal(signal.SIGINT, force_exit)
    signal.signal(signal.SIGTERM, force_exit)
    raise_if_cancelled()


def raise_if_cancelled() -> None:
    """Raise the cancellation of a signal already received. Python runs a signal handler at the next bytecode,
    which may be inside a weakref callback or a `__del__` (a garbage collection in SQLAlchemy, say), where the
    exception is printed as "Exception ignored" and dropped; a long job calls this between its steps, so that
    such a signal still cancels it instead of letting it finish."""
    if signals_received:
        raise Terminated if signals_received[0] == signal.SIGTERM else KeyboardInterrupt


def force_exit(signum, frame):
    os.write(2, b"acla-orch: forced exit; runs left RUNNING show as interrupted in `acla-orch status`\n")
    os._exit(128 + signum)


def install_signal_handlers() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) is not signal.SIG_IGN:  # a background job keeps ignoring Ctrl-C
            signal.signal(signum, cancel)
