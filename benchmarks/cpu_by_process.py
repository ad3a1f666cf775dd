"""Where a command's CPU goes, process by process: `python benchmarks/cpu_by_process.py -- make test`.

Runs the command, and every `--interval` seconds reads /proc for each process below it (and, where it can make
one, every process of a cpuacct cgroup it starts the command in: Ray's daemons leave the process tree). Each
process's CPU (user + system) is kept at its last reading, then summed by kind: the process title Ray gives
its workers (`ray::ImplicitFunc`, `ray::RayTrainWorker`, ...), or the program and its first argument. A
process that lives less than one interval can be missed; the cgroup's own total (printed beside the sampled one)
says how much was. The test-suite profile in docs/measurements.md were made with it.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import time

TICK = os.sysconf("SC_CLK_TCK")


def make_cgroup() -> str | None:
    folder = f"/sys/fs/cgroup/cpuacct/acla-cpu-{os.getpid()}"
    try:
        os.makedirs(folder)
        return folder
    except OSError:
        return None  # no cgroup v1 cpuacct, or not allowed: the process tree only


def watched(root: int, cgroup: str | None) -> set[int]:
    """The command's processes: its descendants, and everything in its cgroup."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    children[int(handle.read().rsplit(")", 1)[1].split()[1])].append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    found, todo = {root}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    if cgroup:
        with open(f"{cgroup}/cgroup.procs") as handle:
            found |= {int(pid) for pid in handle.read().split()}
    return found


def kind(command: str) -> str:
    parts = command.split() or ["?"]
    if "python" in os.path.basename(parts[0]) and len(parts) > 1:
        return " ".join(os.path.basename(p) for p in parts[1:3])
    return os.path.basename(parts[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=0.2)
    parser.add_argument("--json", help="write every process's CPU seconds and command line here")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        print("cpu_by_process.py: no command given; expected: cpu_by_process.py [--interval S] -- COMMAND ...",
              file=sys.stderr)
        return 2
    cgroup = make_cgroup()

    def enter() -> None:
        if cgroup:
            with open(f"{cgroup}/cgroup.procs", "w") as handle:
                handle.write(str(os.getpid()))
    started = time.time()
    child = subprocess.Popen(command, preexec_fn=enter)
    seen: dict[int, tuple[float, str]] = {}
    while child.poll() is None:
        for pid in watched(child.pid, cgroup):
            try:
                with open(f"/proc/{pid}/stat") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
                with open(f"/proc/{pid}/cmdline", "rb") as handle:
                    line = handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                continue
            cpu = (int(fields[11]) + int(fields[12])) / TICK
            seen[pid] = (cpu, line or seen.get(pid, (0.0, ""))[1])
        time.sleep(args.interval)
    wall = time.time() - started
    total = None
    if cgroup:
        with open(f"{cgroup}/cpuacct.usage") as handle:
            total = int(handle.read()) / 1e9
    by_kind: dict[str, list[float]] = collections.defaultdict(list)
    for cpu, line in seen.values():
        by_kind[kind(line)].append(cpu)
    print(f"exit {child.returncode}, wall {wall:.1f} s, CPU {total if total is not None else float('nan'):.1f} s "
          f"(cgroup), {sum(c for c, _ in seen.values()):.1f} s sampled over {len(seen)} processes", file=sys.stderr)
    for name, cpus in sorted(by_kind.items(), key=lambda item: -sum(item[1]))[:30]:
        print(f"{sum(cpus):8.1f} s  {len(cpus):4d} x  {name[:80]}", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({str(pid): value for pid, value in seen.items()}, handle)
    if cgroup:
        try:
            os.rmdir(cgroup)
        except OSError:
            pass
    return child.returncode


if __name__ == "__main__":
    sys.exit(main())
