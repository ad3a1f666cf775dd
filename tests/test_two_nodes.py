"""A real two-node Ray cluster on this machine (a head with the dashboard and a second node, 1 CPU and its own
temp dir each, token auth on), a smoke search submitted with `ray job submit` as infra/README.md documents it,
its artifacts on SeaweedFS: trials ran on both nodes, the retrain used 2 workers, every checkpoint is in the
bucket and the front is in MLflow. The nodes are stopped by their PIDs (never a bare `ray stop`)."""
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from tests.pgserver import free_port
from tests.procs import descendants, kill_with_environment, mentioning
from tests.s3server import SECRET_KEY
from tests.test_orchestrator_s3 import s3_environment

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def ray_cli(*args, env, timeout=120):
    return subprocess.run([str(BIN / "ray"), *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def two_nodes(s3_env):
    """(dashboard address, environment with the token) of a head and a worker node, 1 CPU each, whose
    environment holds the S3 credentials (as an instance profile or a pod's Secret gives them)."""
    if not (BIN / "ray").exists():
        pytest.fail("the ray CLI is not installed")
    import importlib.util
    if importlib.util.find_spec("aiohttp_cors") is None:  # the dashboard's: `ray job submit` needs ray[default]
        pytest.fail("ray[default] is not installed; the dev extra brings the cluster extra")
    folders = [Path(tempfile.mkdtemp(prefix=f"acla-n{i}-")) for i in range(2)]
    gcs, dashboard = free_port(), free_port()
    env = {**os.environ, **s3_environment(s3_env), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": str(ROOT),
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}  # acla-orch on the nodes' PATH, as in the image
    env.pop("RAY_ADDRESS", None)
    try:
        out = ray_cli("start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}", "--num-cpus=1",
                      "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
                      f"--dashboard-agent-listen-port={free_port()}", f"--temp-dir={folders[0]}",
                      "--disable-usage-stats", env=env)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        out = ray_cli("start", f"--address=127.0.0.1:{gcs}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                      f"--dashboard-agent-listen-port={free_port()}", f"--temp-dir={folders[1]}",
                      "--disable-usage-stats", env=env)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        yield f"http://127.0.0.1:{dashboard}", f"127.0.0.1:{gcs}", env, folders
    finally:
        # every process started for our two nodes (their command lines name our temp dirs) and their workers,
        # by PID
        started = {pid for folder in folders for pid, _ in mentioning(str(folder))}
        started |= {pid for root in list(started) for pid, _ in descendants(root)}
        for pid in started:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        kill_with_environment(f"RAY_AUTH_TOKEN={env['RAY_AUTH_TOKEN']}")  # the worker node's client proxy, too
        time.sleep(1)
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)


def test_ray_job_submit_on_two_nodes(two_nodes, s3_env, tmp_path):
    from mlflow.tracking import MlflowClient
    dashboard, address, env, node_folders = two_nodes
    bucket = f"acla-{uuid.uuid4().hex[:8]}"
    s3_env.client().create_bucket(Bucket=bucket)
    env = {**env, "RAY_ADDRESS": dashboard}
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    started = time.time()
    # a just-started head answers "No available agent to submit job, please try again later" until its agent is up
    # (each node has its own agent port: at Ray's fixed default, 52365, another Ray on the machine takes it first,
    # and the head's agent then never serves)
    for _ in range(12):
        out = ray_cli("job", "submit", "--", "env", f"ACLA_HOME={tmp_path}", "acla-orch", "search", "--budget", "2G",
                      "--task", "car", "--profile", "smoke", "--trials", "2", "--concurrency", "2",
                      "--retrain-workers", "2", "--tracking-uri", tracking, "--artifact-root", f"s3://{bucket}/acla",
                      "--json", env=env, timeout=900)
        if "No available agent to submit job" not in out.stdout + out.stderr:
            break
        time.sleep(5)
        started = time.time()
    took = time.time() - started
    print(f"two-node search through ray job submit: {took:.0f} s")  # pytest -s shows it
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("{\"experiment\"")))
    client = MlflowClient(tracking)
    trials = [client.get_run(t["run_id"]) for t in summary["trials"]]
    assert len({t.data.params["node_id"] for t in trials}) == 2  # one trial on each node
    retrain = client.get_run(summary["retrained"][0]["run_id"])
    assert retrain.data.params["workers"] == "2"
    # the width line's plain net trained as a Ray task on the cluster, recorded under the search's parent
    width = client.get_run(summary["width"]["run_id"])
    assert width.data.tags["acla_kind"] == "width" and width.info.status == "FINISHED"
    keys = [o["Key"] for o in s3_env.client().list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert any(k.startswith("acla/ray-train/") and k.endswith("/model.pt") for k in keys)
    assert not list(Path(tmp_path).rglob("model.pt"))  # no checkpoint on a node's own disk
    # the nodes had the S3 secret and the cluster token in their environment: neither reached a file (Ray's logs
    # and session files on both nodes, the run directory)
    secrets_given = (SECRET_KEY.encode(), env["RAY_AUTH_TOKEN"].encode())
    leaks = [str(path) for folder in (*node_folders, tmp_path) for path in Path(folder).rglob("*")
             if path.is_file() and not path.is_symlink() and any(s in path.read_bytes() for s in secrets_given)]
    assert not leaks
    experiment = client.get_experiment_by_name("acla-car-q10")
    assert {r.info.run_id for r in client.search_runs([experiment.experiment_id], "tags.pareto = 'true'")} == \
        {t["run_id"] for t in summary["trials"] if t["pareto"]}

    # Bad input on a cluster: one line and exit status 2 each, before any trial
    search = ["search", "--budget", "2G", "--task", "car", "--profile", "smoke", "--address", address]
    # (the quick profile: its batch of 8 patches can be shared by 3 workers, so the cluster's CPUs are what refuse)
    cases = [(["--artifact-root", f"s3://{bucket}/x", "--retrain-workers", "3", "--profile", "quick", "--budget", "50G"],
              env, "retraining with 3 workers asks"),
             (["--artifact-root", str(tmp_path / "local")], env, "is a local path, but the Ray cluster has 2 nodes"),
             (["--artifact-root", f"s3://{bucket}/x"], {**env, "RAY_AUTH_TOKEN": "0" * 64}, "token is missing or wrong")]
    for extra, case_env, fragment in cases:
        out = subprocess.run([sys.executable, "-m", "orchestrator.cli", *search, *extra], cwd=tmp_path, text=True,
                             env={**case_env, "ACLA_HOME": str(tmp_path / "bad")}, capture_output=True, timeout=180)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1 and fragment in lines[0], out.stderr[-2000:]
