"""A smoke search whose artifacts land in a real S3 server (SeaweedFS): Ray Train checkpoints, the registered
model, genotypes and the Parquet tables, each checked against its manifest; credentials never recorded."""
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from storage.manifest import verify_artifact_set
from storage.stores import StorageConfig, open_store
from tests.s3server import ACCESS_KEY, SECRET_KEY, free_port_pair
from tests.test_orchestrator import acla


def s3_environment(server):
    return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": server.endpoint}


def manifests(server, bucket):
    keys = [o["Key"] for page in server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])]
    return keys, sorted(k[: -len("/manifest.json")] for k in keys if k.endswith("/manifest.json"))


def assert_no_secret(client, experiment_name, stderr):
    assert SECRET_KEY not in stderr
    experiment = client.get_experiment_by_name(experiment_name)
    for run in client.search_runs([experiment.experiment_id]):
        for value in list(run.data.params.values()) + list(run.data.tags.values()):
            assert SECRET_KEY not in value and ACCESS_KEY not in value


@pytest.fixture
def proxied_mlflow(s3_env, run_dir):
    """The team stack of infra/compose/: an MLflow server on a real PostgreSQL backend store with SeaweedFS as its
    artifact destination, each on 127.0.0.1 and each stopped by its PID."""
    from tests.pgserver import PostgresServer, available
    if not available():
        pytest.fail("PostgreSQL (initdb, pg_ctl) is not installed; these machines have it")
    bucket = f"acla-{uuid.uuid4().hex[:8]}"
    s3_env.client().create_bucket(Bucket=bucket)
    port = free_port_pair()
    env = {**os.environ, **s3_environment(s3_env), "MLFLOW_S3_ENDPOINT_URL": s3_env.endpoint,
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    database = PostgresServer().start()
    backend = database.create_database("mlflow")
    server = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "mlflow"), "server", "--host", "127.0.0.1",
                               "--port", str(port), "--workers", "1", "--backend-store-uri", backend,
                               "--artifacts-destination", f"s3://{bucket}/mlflow"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}", bucket
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        database.stop()


def test_mlflow_server_with_s3_artifact_destination(s3_env, proxied_mlflow, run_dir, monkeypatch):
    """A whole search, retraining and registration included, tracked by the team stack's MLflow server, with its
    artifacts in a bucket of their own: every check of the sqlite search holds through the server; the bucket
    holds Ray Train's checkpoints, the registered model, genotypes and the Parquet tables, each checked against
    its manifest; the model restores from the bucket; the server's UI shows the front in a real browser; and no
    credential is recorded anywhere."""
    from mlflow.tracking import MlflowClient

    from tests.test_orchestrator import check_mlflow_ui, check_search
    uri, server_bucket = proxied_mlflow
    for key, value in s3_environment(s3_env).items():
        monkeypatch.setenv(key, value)
    bucket = f"acla-{uuid.uuid4().hex[:8]}"
    root = f"s3://{bucket}/team"
    search = ["search", "--budget", "2G", "--task", "car", "--profile", "smoke", "--json", "--no-width", "--tracking-uri", uri,
              "--artifact-root", root]
    out = acla(*search, home=run_dir)
    assert out.returncode == 2 and f"bucket {bucket} does not exist" in out.stderr  # never created silently
    out = acla(*search, "--create-bucket", home=run_dir)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout)
    check_search(summary, uri)
    assert not os.path.exists(os.path.join(run_dir, "mlflow.db"))  # nothing tracked locally beside the server
    server_keys, _ = manifests(s3_env, server_bucket)
    assert any(k.startswith("mlflow/") and k.endswith("genotype.json") for k in server_keys)  # proxied by the server
    keys, sets = manifests(s3_env, bucket)
    assert any(k.startswith("team/ray-train/") and k.endswith("/model.pt") for k in keys)  # Ray Train checkpoints
    assert {"ray-train", "models", "genotypes", "tables"} <= {s.split("/")[1] for s in sets}
    store = open_store(StorageConfig(root))
    for prefix in sets:
        verify_artifact_set(store, prefix[len("team/"):])
    retrained = summary["retrained"][0]
    assert retrained["checkpoint_uri"].startswith(f"{root}/ray-train/")
    assert retrained["model_set_uri"].startswith(f"{root}/models/acla-car-q10/")
    # the model set restores an image straight from the bucket
    from tests.test_restore import photo
    photo(Path(run_dir) / "in.png", (24, 24), 0)
    (Path(run_dir) / "restored").mkdir()
    out = acla("restore", "--model", retrained["model_set_uri"], "in.png", "-o", "restored", "--json", home=run_dir)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout)["outputs"][0]["output_size"] == [24, 24]
    out = acla("restore", "--model", f"{retrained['model_set_uri']}/missing", "in.png", "-o", "restored", home=run_dir)
    assert out.returncode == 2 and "unknown model reference" in out.stderr
    # the front straight from Parquet, without MLflow, equals the PostgreSQL-backed server's, which is the search's
    table = json.loads(acla("pareto", "--task", "car", "--json", "--artifact-root", root, home=run_dir).stdout)
    out = acla("pareto", "--task", "car", "--source", "mlflow", "--tracking-uri", uri, "--json", home=run_dir)
    front = json.loads(out.stdout)["front"]
    assert {r["run_id"] for r in table["front"]} == {r["run_id"] for r in front}
    assert {r["run_id"] for r in front} == {t["run_id"] for t in summary["trials"] if t["pareto"]} != set()
    assert_no_secret(MlflowClient(uri), "acla-car-q10", out.stderr)
    # nowhere under the run directory either, Ray's logs included (the short Ray folder is linked from there)
    leaks = [str(path) for path in Path(run_dir).rglob("*") if path.is_file() and not path.is_symlink()
             and SECRET_KEY.encode() in path.read_bytes()]
    ray_dir = Path(run_dir) / "ray"
    leaks += [str(path) for path in ray_dir.resolve().rglob("*") if path.is_file() and SECRET_KEY.encode() in
              path.read_bytes()] if ray_dir.is_symlink() else []
    assert not leaks, leaks
    check_mlflow_ui(uri, summary)


def test_bad_storage_input_is_one_line(s3_env, run_dir, monkeypatch):
    for key, value in s3_environment(s3_env).items():
        monkeypatch.setenv(key, value)
    cases = [(["--artifact-root", "s3://"], "malformed"),
             (["--artifact-root", "s3://acla-nope-bucket/x"], "does not exist"),
             (["--artifact-root", "s3://acla-nope-bucket/x", "--s3-endpoint", f"http://127.0.0.1:{free_port_pair()}"],
              "does not answer")]
    for extra, fragment in cases:
        out = acla("search", "--budget", "2G", "--task", "car", "--profile", "smoke", *extra, home=run_dir)
        assert out.returncode == 2 and fragment in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    out = acla("search", "--budget", "2G", "--task", "car", "--profile", "smoke", "--artifact-root",
               "s3://acla-any-bucket/x", home=run_dir)
    assert out.returncode == 2 and "denied" in out.stderr, out.stderr


def test_s3_outage_stops_the_search_and_resume_completes_it(run_dir, monkeypatch):
    """Stop the S3 server after a trial has finished: no new trial starts, the search ends soon with one line
    and exit 2, no MLflow run is left RUNNING; once the server is back, `resume` completes the search."""
    import shutil
    import tempfile

    from mlflow.tracking import MlflowClient
    from orchestrator.search.state import SearchState
    from tests.s3server import WeedServer
    server = WeedServer(tempfile.mkdtemp(prefix="acla-weed-mid-")).start()
    try:
        bucket = f"acla-{uuid.uuid4().hex[:8]}"
        server.client().create_bucket(Bucket=bucket)
        env = {**os.environ, **s3_environment(server), "ACLA_HOME": run_dir, "MLFLOW_DISABLE_TELEMETRY": "true",
               "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
        for variable in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI"):  # this search starts its own Ray and store
            env.pop(variable, None)
        args = ["search", "--budget", "2G", "--task", "car", "--profile", "smoke", "--trials", "3", "--concurrency",
                "1", "--no-retrain", "--no-width", "--artifact-root", f"s3://{bucket}/run"]
        search = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *args], env=env, cwd=run_dir,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        state, deadline, finished = SearchState(run_dir), time.time() + 240, False
        while time.time() < deadline and search.poll() is None and not finished:
            searches = state.searches()
            finished = bool(searches) and [t["state"] for t in state.trials(searches[0]["parent_run_id"])][:1] == ["finished"]
            time.sleep(0.2)
        assert finished, f"no trial finished within 240 s while the store was up (exit {search.poll()}: " \
                          f"{search.stderr.read()[-2000:] if search.poll() is not None else 'still running'})"
        server.stop()
        stopped = time.time()
        _, stderr = search.communicate(timeout=300)
        took = time.time() - stopped
        print(f"the search ended {took:.1f} s after the S3 server stopped")  # pytest -s shows it
        assert search.returncode == 2, stderr[-3000:]
        last = stderr.strip().splitlines()[-1]
        assert last.startswith("acla-orch: error: the artifact store failed during the run") and "Traceback" not in stderr
        assert took < 30, f"the search went on for {took:.0f} s after the store stopped"
        client = MlflowClient(f"sqlite:///{run_dir}/mlflow.db")
        experiment_id = client.get_experiment_by_name("acla-car-q10").experiment_id
        assert [p.info.status for p in client.search_runs([experiment_id], filter_string="tags.acla_kind = 'search'")] \
            == ["FAILED"]
        assert not [r for r in client.search_runs([experiment_id]) if r.info.status == "RUNNING"]
        trials_before = len(state.trials(state.searches()[0]["parent_run_id"]))
        assert trials_before <= 2  # the finished one, and at most the one running when the store went

        server.start()  # the same folder and ports: the store is back
        out = subprocess.run([sys.executable, "-m", "orchestrator.cli", "resume", "--last", "--json"], env=env,
                             cwd=run_dir, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        assert len(json.loads(out.stdout)["trials"]) == 3
        runs = client.search_runs([experiment_id])
        assert not [r for r in runs if r.info.status == "RUNNING"]
        finished = [r for r in runs if r.data.tags.get("acla_kind") == "trial" and r.info.status == "FINISHED"]
        assert len(finished) == 3
        _, sets = manifests(server, bucket)
        for key, value in s3_environment(server).items():
            monkeypatch.setenv(key, value)
        store = open_store(StorageConfig(f"s3://{bucket}/run", endpoint=server.endpoint))
        for prefix in sets:
            verify_artifact_set(store, prefix[len("run/"):])
    finally:
        server.stop()
        shutil.rmtree(server.folder, ignore_errors=True)
