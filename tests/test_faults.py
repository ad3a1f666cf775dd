"""A node dies under a trial: on a real two-node Ray cluster started on this machine (`ray start --head`, and a
second `ray start --address` node with its own CPUs), the second node's raylet is killed while a trial runs
there. Tune runs that trial again on the surviving node (FailureConfig), and the search completes. Every Ray
process of this cluster is stopped by its PID (never a bare `ray stop`)."""
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time

from orchestrator.search.state import SearchState
from tests.procs import kill_mentioning, kill_with_environment, processes
from tests.pgserver import free_port
from tests.s3server import free_port_pair

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_node_dies_during_a_trial_and_the_search_completes(tmp_path, s3_env):
    from tests.test_orchestrator_s3 import s3_environment
    ray = os.path.join(os.path.dirname(sys.executable), "ray")
    temp_dir = tempfile.mkdtemp(prefix="acla-2n-", dir="/tmp")  # Ray's socket paths must stay short
    bucket = f"acla-{secrets.token_hex(4)}"
    s3_env.client().create_bucket(Bucket=bucket)  # a multi-node cluster keeps its artifacts on S3
    env = {**os.environ, **s3_environment(s3_env), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    env.pop("RAY_ADDRESS", None)
    port, node_port = free_port_pair(), free_port_pair()
    try:
        # each node's dashboard agent on a port of its own: on Ray's fixed one, a second node waits 3.3 s for it
        subprocess.run([ray, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                        f"--dashboard-agent-listen-port={free_port()}",
                        f"--temp-dir={temp_dir}", "--disable-usage-stats"], env=env, check=True,
                       capture_output=True, timeout=120)
        subprocess.run([ray, "start", f"--address=127.0.0.1:{port}", "--num-cpus=2", f"--node-manager-port={node_port}",
                        f"--dashboard-agent-listen-port={free_port()}", "--disable-usage-stats"], env=env,
                       check=True, capture_output=True, timeout=120)
        second = [pid for pid, _, line in processes() if "raylet" in line and f"--node_manager_port={node_port}" in line]
        assert len(second) == 1
        home = str(tmp_path / "home")
        search = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "search", "--budget", "2G", "--task", "car", "--profile", "smoke",
             "--trials", "4", "--concurrency", "2", "--search-steps", "60", "--no-retrain", "--no-width", "--json",
             "--address", f"127.0.0.1:{port}", "--artifact-root", f"s3://{bucket}/acla"],
            env={**env, "ACLA_HOME": home, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": ROOT}, cwd=str(tmp_path),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 180
        while time.time() < deadline and search.poll() is None:  # a trial running on the second node
            if any(parent == second[0] and line.startswith("ray::ImplicitFunc") for _, parent, line in processes()):
                break
            time.sleep(0.2)
        assert search.poll() is None, "the search ended before a trial ran on the second node"
        os.kill(second[0], signal.SIGKILL)  # the second node's raylet: the node and its trial are gone
        stdout, stderr = search.communicate(timeout=600)
        assert search.returncode == 0, stderr[-3000:]
        summary = json.loads(stdout)
        assert len(summary["trials"]) == 4
        state = SearchState(home)
        trials = state.trials(summary["parent_run_id"])
        assert [t["state"] for t in trials] == ["finished"] * 4
        assert max(t["attempts"] for t in trials) == 2  # the trial on the dead node ran again, once
    finally:
        kill_mentioning(temp_dir)  # every process of this cluster, by PID: those naming its folder, and those
        kill_with_environment(f"RAY_AUTH_TOKEN={env['RAY_AUTH_TOKEN']}")  # that do not (the second node's agents)


def test_a_failed_trial_is_recorded_with_its_reason(tmp_path):
    """Once its retries are spent, a trial is failed with the last line of its error (Tune keeps the whole
    traceback in a file), which goes to its MLflow run and the search state."""
    from orchestrator.search.driver import trial_error

    class Trial:
        error_file = str(tmp_path / "error.txt")

    (tmp_path / "error.txt").write_text("Traceback (most recent call last):\n  File 'x', line 1\n"
                                        "ray.exceptions.NodeDiedError: the node running this trial died\n\n")
    assert trial_error(Trial()) == "ray.exceptions.NodeDiedError: the node running this trial died"
    Trial.error_file = str(tmp_path / "missing.txt")
    assert trial_error(Trial()).startswith("trial failed (")
