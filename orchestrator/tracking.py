"""MLflow, written from the driver only, with explicit run ids (per-trial callbacks inside Ray have known
nesting bugs: MLflow #19978, Ray #36257 and #45456).

Experiment `acla-<task>`; one parent run per `search`; one child run per trial (params, metrics, genotype
artifact); the Pareto front over every finished trial of the experiment, tagged `pareto=true/false`; the
front as a Parquet table and a PNG plot on the parent; one run per retrain, linked to its trial.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from .pareto import pareto_front, plot_front

TRIAL_METRICS = ("psnr", "ssim", "psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb", "input_psnr", "macs", "proxy_macs",
                 "proxy_channels", "params", "num_modules", "mean_active_keys", "latency_ms", "trial_seconds")
TRIAL_PARAMS = ("device", "attention_backend")  # strings a trial reports about where it ran
# What a finished trial's result keeps in the search state (Tune adds its own bookkeeping: time, hostname, ...).
TRIAL_RESULT_KEYS = TRIAL_METRICS + TRIAL_PARAMS + ("genotype", "position_scores")


def experiment_name(task_name: str) -> str:
    return f"acla-{task_name}"


def ensure_experiment(client: MlflowClient, name: str, artifact_root: str, tracking_uri: str) -> str:
    """An MLflow server decides where artifacts go (proxied `--artifacts-destination` or its default); with a
    local store they go under the artifact root, on disk or S3."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    if tracking_uri.startswith(("http://", "https://")):
        return client.create_experiment(name)
    if artifact_root.startswith("s3://"):
        location = f"{artifact_root.rstrip('/')}/mlflow/{name}"
    else:
        root = Path(artifact_root[len("file://"):] if artifact_root.startswith("file://") else artifact_root)
        location = (root / "mlflow" / name).absolute().as_uri()
    return client.create_experiment(name, artifact_location=location)


def start_parent(client: MlflowClient, experiment_id: str, *, run_name: str, tags: dict) -> str:
    run = client.create_run(experiment_id, run_name=run_name, tags={"acla_kind": "search", **tags})
    return run.info.run_id


def log_trial(client: MlflowClient, experiment_id: str, parent_id: str, *, trial_id: str, params: dict,
              result: dict, search_tags: dict) -> str:
    """A finished child run: the outer-search params, the genotype fields, the metrics, the genotype JSON."""
    genotype = json.loads(result["genotype"])
    run = client.create_run(experiment_id, run_name=f"trial-{trial_id}",
                            tags={"mlflow.parentRunId": parent_id, "acla_kind": "trial", "trial_id": trial_id,
                                  **search_tags})
    run_id = run.info.run_id
    fields = {**params, **{f"genotype.{k}": v for k, v in genotype.items()},
              **{k: result[k] for k in TRIAL_PARAMS if k in result}}
    scores = json.loads(result.get("position_scores", "[]"))
    per_position = [Metric(f"position_{kind}_{s['position']}", float(s[kind]), 0, 0)
                    for s in scores for kind in ("score", "spread", "stderr", "prob")]
    client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in fields.items()],
                     metrics=[Metric(k, float(result[k]), 0, 0) for k in TRIAL_METRICS if k in result] + per_position)
    try:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "genotype.json"
            path.write_text(result["genotype"])
            client.log_artifact(run_id, str(path))
            if scores:
                path = Path(folder) / "position_scores.json"
                path.write_text(json.dumps(scores, indent=1))
                client.log_artifact(run_id, str(path))
    except BaseException as err:  # the artifact store failed: the run never half-exists as RUNNING
        client.set_tag(run_id, "error", f"recording failed: {err.__class__.__name__}: {err}"[:4000])
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id


def log_failed_trial(client: MlflowClient, experiment_id: str, parent_id: str, *, trial_id: str, params: dict,
                     error: str, search_tags: dict) -> str:
    run = client.create_run(experiment_id, run_name=f"trial-{trial_id}",
                            tags={"mlflow.parentRunId": parent_id, "acla_kind": "trial", "trial_id": trial_id,
                                  "error": error[:4000], **search_tags})
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
    client.set_terminated(run.info.run_id, "FAILED")
    return run.info.run_id


def finished_trials(client: MlflowClient, experiment_id: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string="tags.acla_kind = 'trial' and attributes.status = 'FINISHED'",
                                  max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def update_front(client: MlflowClient, experiment_id: str) -> list[dict]:
    """Recompute the front over every finished trial of the experiment; tag each run; return the rows."""
    runs = [r for r in finished_trials(client, experiment_id) if "psnr" in r.data.metrics and "macs" in r.data.metrics]
    points = [(r.data.metrics["psnr"], r.data.metrics["macs"]) for r in runs]
    flags = pareto_front(points)
    rows = []
    for run, on_front in zip(runs, flags):
        if run.data.tags.get("pareto") != str(on_front).lower():
            client.set_tag(run.info.run_id, "pareto", str(on_front).lower())
        params = run.data.params
        rows.append({"run_id": run.info.run_id, "trial_id": run.data.tags.get("trial_id", ""),
                     "search_run_id": run.data.tags.get("mlflow.parentRunId", ""),
                     "budget_macs": float(run.data.tags.get("budget_macs", "nan")),
                     "backbone": params.get("backbone", ""), "positions": params.get("genotype.positions", ""),
                     "keys": params.get("genotype.keys", ""), "pareto": on_front,
                     **{k: float(run.data.metrics[k]) for k in TRIAL_METRICS if k in run.data.metrics}})
    return rows


def front_table(rows: list[dict], extra: tuple[str, ...] = ()) -> pa.Table:
    columns = ["run_id", "trial_id", "search_run_id", "budget_macs", "backbone", "positions", "keys", "pareto",
               *TRIAL_METRICS, *extra]
    return pa.table({c: [row.get(c) for row in rows] for c in columns})


def log_front(client: MlflowClient, parent_id: str, rows: list[dict], *, budget_macs: float, title: str,
              retrained: list[tuple[float, float]] = (), suffix: str = "") -> None:
    """The front as Parquet and PNG artifacts of the parent run."""
    with tempfile.TemporaryDirectory() as folder:
        table_path = Path(folder) / f"pareto_front{suffix}.parquet"
        pq.write_table(front_table(rows), table_path)
        plot_path = Path(folder) / f"pareto_front{suffix}.png"
        plot_front(str(plot_path), points=[(r["psnr"], r["macs"]) for r in rows], on_front=[r["pareto"] for r in rows],
                   budget_macs=budget_macs, title=title, retrained=retrained)
        client.log_artifact(parent_id, str(table_path), "pareto")
        client.log_artifact(parent_id, str(plot_path), "pareto")
