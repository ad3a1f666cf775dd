"""benchmarks/cpu_by_process.py (the suite's profile in the README): it counts the CPU of a command's own
processes, children included, by kind, and passes the command's exit status on."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "cpu_by_process.py")
BUSY = "import time\nstart = time.process_time()\nwhile time.process_time() - start < {s}:\n    pass\n"


def test_a_child_process_cpu_is_counted_by_its_kind_and_the_exit_status_passed_on(tmp_path):
    # a parent that burns 0.6 s of CPU, starts a child that burns 0.8 s, and exits 3
    child = BUSY.format(s=0.8)
    parent = BUSY.format(s=0.6) + f"import subprocess, sys\nsubprocess.run([sys.executable, '-c', {child!r}, 'child'])\n" \
        "sys.exit(3)\n"
    out = subprocess.run([sys.executable, SCRIPT, "--interval", "0.05", "--json", str(tmp_path / "cpu.json"), "--",
                          sys.executable, "-c", parent], capture_output=True, text=True, timeout=60)
    assert out.returncode == 3, out.stderr
    seen = json.loads((tmp_path / "cpu.json").read_text())
    cpus = sorted(cpu for cpu, _ in seen.values())
    assert len(cpus) == 2
    # each process's own CPU, less what it spent after its last reading (more where the sampler waits for a CPU)
    assert 0.4 <= cpus[0] <= 1.0 and 0.5 <= cpus[1] <= 1.2, cpus
    assert out.stderr.splitlines()[0].startswith("exit 3, wall ")


def test_no_command_is_one_line_and_exit_2():
    out = subprocess.run([sys.executable, SCRIPT], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and "no command given" in out.stderr
