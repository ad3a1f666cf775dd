"""Storage cost, as JSON, against a local SeaweedFS started here (stopped by its PID):
- upload throughput of a 200 MB checkpoint through `put_artifact_set` (sha256 + manifest) as a ratio to a plain
  boto3 `upload_file` of the same file, in the same run (target >= 0.9);
- the time for the front to be read from the Parquet trial table against querying MLflow for the same runs.
Usage: python benchmarks/storage.py [--size-mb 200] [--runs 200]"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.s3server import ACCESS_KEY, SECRET_KEY, WeedServer  # noqa: E402


def upload_ratio(server: WeedServer, size_mb: int, repeats: int) -> dict:
    from storage.manifest import put_artifact_set
    from storage.stores import StorageConfig, open_store
    folder = tempfile.mkdtemp(prefix="acla-bench-")
    try:
        path = os.path.join(folder, "checkpoint.pt")
        with open(path, "wb") as handle:
            for _ in range(size_mb):
                handle.write(os.urandom(1024 * 1024))
        client = server.client()
        client.create_bucket(Bucket="bench-plain")
        client.create_bucket(Bucket="bench-ours")
        store = open_store(StorageConfig("s3://bench-ours/runs"))
        plain, ours = [], []
        for index in range(repeats):  # interleaved, so drift hits both alike
            start = time.perf_counter()
            client.upload_file(path, "bench-plain", f"plain-{index}.pt")
            plain.append(time.perf_counter() - start)
            start = time.perf_counter()
            put_artifact_set(store, f"ckpt-{index}", {"checkpoint.pt": path})
            ours.append(time.perf_counter() - start)
        plain_s, ours_s = statistics.median(plain), statistics.median(ours)
        return {"size_mb": size_mb, "plain_boto3_s": round(plain_s, 3), "ours_s": round(ours_s, 3),
                "plain_mb_per_s": round(size_mb / plain_s, 1), "ours_mb_per_s": round(size_mb / ours_s, 1),
                "throughput_ratio": round(plain_s / ours_s, 3)}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def front_read_times(runs: int) -> dict:
    import pyarrow as pa
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    from orchestrator.tracking.pareto import pareto_front
    from orchestrator.tracking.runs import update_front
    from storage.stores import StorageConfig, open_store
    from storage.trial_table import append_trials, read_trials
    folder = tempfile.mkdtemp(prefix="acla-bench-")
    try:
        client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
        experiment = client.create_experiment("acla-bench", artifact_location=f"file://{folder}/a")
        rows = []
        for index in range(runs):
            run = client.create_run(experiment, tags={"acla_kind": "trial"})
            psnr, macs = 30 + (index % 17) * 0.1, 1e9 * (1 + index % 23)
            client.log_batch(run.info.run_id, metrics=[Metric("psnr", psnr, 0, 0), Metric("macs", macs, 0, 0)],
                             params=[Param("backbone", "c32-b8")])
            client.set_terminated(run.info.run_id)
            rows.append({"run_id": run.info.run_id, "psnr": psnr, "macs": macs})
        store = open_store(StorageConfig(f"{folder}/store"))
        append_trials(store, "acla-bench", "part-1", pa.Table.from_pylist(rows))
        start = time.perf_counter()
        table = read_trials(store, "acla-bench").to_pylist()
        pareto_front([(r["psnr"], r["macs"]) for r in table])
        parquet_s = time.perf_counter() - start
        start = time.perf_counter()
        update_front(client, experiment)
        mlflow_s = time.perf_counter() - start
        return {"runs": runs, "parquet_s": round(parquet_s, 4), "mlflow_s": round(mlflow_s, 4),
                "mlflow_over_parquet": round(mlflow_s / parquet_s, 1)}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    os.environ.update({"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                       "AWS_DEFAULT_REGION": "us-east-1", "MLFLOW_DISABLE_TELEMETRY": "true"})
    server = WeedServer(tempfile.mkdtemp(prefix="acla-weed-bench-")).start()
    try:
        os.environ["AWS_ENDPOINT_URL"] = server.endpoint
        results = {"upload": upload_ratio(server, args.size_mb, args.repeats)}
    finally:
        server.stop()
        shutil.rmtree(server.folder, ignore_errors=True)
    results["front_read"] = front_read_times(args.runs)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
