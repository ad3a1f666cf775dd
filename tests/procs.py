"""The live processes, read from /proc (no tools needed): to find what a test started, and to stop exactly that
by PID (never a bare `ray stop`)."""
from __future__ import annotations

import os
import signal
import time


def other_pids() -> list[int]:
    """Every live process but this one."""
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit() and int(entry) != os.getpid()]


def processes() -> list[tuple[int, int, str]]:
    """(pid, parent pid, command line) of every live process but this one."""
    found = []
    for entry in other_pids():
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                line = handle.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/stat") as handle:
                parent = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        found.append((entry, parent, line))
    return found


def mentioning(text: str, within: float = 0.0) -> list[tuple[int, str]]:
    """(pid, command line) of the processes whose command line holds `text`, after waiting up to `within` s for
    them to go."""
    deadline = time.time() + within
    while True:
        found = [(pid, line) for pid, _, line in processes() if text in line]
        if not found or time.time() >= deadline:
            return found
        time.sleep(0.5)


def kill_mentioning(text: str) -> None:
    for pid, _ in mentioning(text):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def with_environment(marker: str) -> list[int]:
    """PIDs of the processes whose environment holds `marker` (a `NAME=value` unique to what one test started).
    Ray's daemons rename themselves (`ray::DashboardAgent`) and a worker node's client proxy names neither the
    node's folder nor its parent, but every one of them inherits the environment of the `ray start` that made it."""
    needle = marker.encode()
    found = []
    for entry in other_pids():
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                if needle in handle.read().split(b"\0"):
                    found.append(entry)
        except OSError:
            continue
    return found


def kill_with_environment(marker: str) -> None:
    for pid in with_environment(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def descendants(root: int) -> list[tuple[int, str]]:
    """(pid, command line) of every process below `root`."""
    table = processes()
    children: dict[int, list[tuple[int, str]]] = {}
    for pid, parent, line in table:
        children.setdefault(parent, []).append((pid, line))
    found, todo = [], [root]
    while todo:
        for pid, line in children.get(todo.pop(), []):
            found.append((pid, line))
            todo.append(pid)
    return found
