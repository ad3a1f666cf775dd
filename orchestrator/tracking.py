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


def mlflow_client(run):
    """The MLflow client of the run's tracking URI (a sqlite store's folder is made now, not before)."""
    import os

    from .settings import create_sqlite_folder
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    create_sqlite_folder(run.tracking_uri)
    os.environ.update(run.storage.mlflow_environment())  # MLflow's S3 artifacts use the same endpoint
    import mlflow
    mlflow.set_tracking_uri(run.tracking_uri)
    return MlflowClient(run.tracking_uri)


def experiment_name(task_label: str) -> str:
    """One experiment (and one registered model) per task variant: `acla-car-q10`, `acla-sr-x4`. Car q10 and q40,
    or SR x2 and x4, are different problems with their own fronts."""
    return f"acla-{task_label}"


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


def end_parent(client: MlflowClient, parent_id: str, status: str) -> None:
    """FINISHED only when everything the run announces exists; FAILED on an error; KILLED on Ctrl-C/SIGTERM."""
    client.set_terminated(parent_id, status)


def reopen_parent(client: MlflowClient, parent_id: str) -> None:
    client.update_run(parent_id, status="RUNNING")


def close_stale_runs(client: MlflowClient, experiment_id: str, parent_id: str) -> None:
    """MLflow runs of this search left RUNNING by the dead driver (a retrain, usually) are KILLED."""
    for run in client.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}' and "
                                                                 f"attributes.status = 'RUNNING'"):
        client.set_terminated(run.info.run_id, "KILLED")


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


def log_ablation(client: MlflowClient, experiment_id: str, *, tags: dict, rows: list[dict], runs: list[dict],
                 folder: str) -> str:
    """A parent run (every file of `folder` as an artifact) with a child run per variant."""
    parent = client.create_run(experiment_id, run_name=f"ablate-{tags['task']}", tags={"acla_kind": "ablation", **tags})
    parent_id = parent.info.run_id
    for row in rows:
        child = client.create_run(experiment_id, run_name=f"ablate-{row['name']}",
                                  tags={"mlflow.parentRunId": parent_id, "acla_kind": "ablation-variant",
                                        "variant": row["name"]})
        metrics = [Metric(k, float(row[k]), 0, 0) for k in ("psnr_y", "ssim_y", "psnr_y_spread", "input_psnr_y",
                                                            "macs", "params", "train_seconds")]
        metrics += [Metric("psnr_y_seed", float(r["psnr_y"]), 0, r["seed"]) for r in runs if r["name"] == row["name"]]
        params = [Param("variant", row["name"]), Param("genotype", json.dumps(row["genotype"])[:6000]),
                  Param("checkpoints", json.dumps(row["checkpoints"])[:6000])]
        client.log_batch(child.info.run_id, metrics=metrics, params=params)
        client.set_terminated(child.info.run_id, "FINISHED")
    for path in sorted(Path(folder).iterdir()):
        client.log_artifact(parent_id, str(path), "ablation")
    client.set_terminated(parent_id, "FINISHED")
    return parent_id


MODEL_PIP_REQUIREMENTS = ["torch==2.13.0", "acla-orch"]
MODEL_CODE = str(Path(__file__).with_name("mlflow_model.py"))  # the registered model's loader: no pickle


def log_retrain(client: MlflowClient, experiment_id: str, parent_id: str, *, winner, registered: str, metrics: dict,
                params: dict, tags: dict, checkpoint_file: str) -> tuple[str, str]:
    """A retrain run linked to its trial, with its metrics, params and checkpoint, and the model registered as a
    new version of `registered`; returns (run id, version)."""
    import mlflow
    import mlflow.pyfunc
    run = client.create_run(experiment_id, run_name=f"retrain-{winner.trial}",
                            tags={"mlflow.parentRunId": parent_id, "acla_kind": "retrain",
                                  "trial_run_id": winner.run_id, "trial_id": winner.trial, **tags})
    with mlflow.start_run(run_id=run.info.run_id):
        mlflow.log_metrics({k: v for k, v in metrics.items() if k != "step"})
        mlflow.log_params(params)
        mlflow.log_artifact(checkpoint_file, "checkpoint")
        # A model from code: the checkpoint (tensors and JSON, read with weights_only) beside the loader's
        # source; nothing of the registered model is a pickle.
        info = mlflow.pyfunc.log_model(name="model", python_model=MODEL_CODE, artifacts={"checkpoint": checkpoint_file},
                                       registered_model_name=registered, pip_requirements=MODEL_PIP_REQUIREMENTS)
    return run.info.run_id, info.registered_model_version


def finish_retrain(client: MlflowClient, retrain_id: str, winner, *, model_set_uri: str, registered: str, version: str,
                   alias: str | None, retrained_psnr: float) -> None:
    """Where the model set landed, the budget's alias (when given) and the trial's retrained score."""
    client.set_tag(retrain_id, "model_set_uri", model_set_uri)
    if alias:
        client.set_registered_model_alias(registered, alias, version)
    client.set_tag(winner.run_id, "retrained_psnr", f"{retrained_psnr:.4f}")


def log_evaluation(tracking_uri: str, run_id: str, image_set: str, mean: dict) -> None:
    """`evaluate`'s means on the model's own run, one metric per score: `eval_<set>_psnr_y`, ..."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in image_set)
    client = MlflowClient(tracking_uri)
    client.log_batch(run_id, metrics=[Metric(f"eval_{safe}_{key}", float(value), 0, 0) for key, value in mean.items()])
