"""MLflow, written from the driver only, with explicit run ids (per-trial callbacks inside Ray have known
nesting bugs: MLflow #19978, Ray #36257 and #45456).

Experiment `acla-<task>`; one parent run per `search`; one child run per trial (params, metrics, genotype
artifact); the Pareto front over every trial of the experiment's table, tagged `pareto=true/false` (a search
computes it from its own records, search/front.py; `pareto --source mlflow` recomputes it from the runs,
`update_front`); the front as a Parquet table and a PNG plot on the parent; one run per retrain, linked to its trial.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from orchestrator.tracking.pareto import pareto_front, plot_front, point_label
from orchestrator.runtime.records import TRIAL_METRICS, TRIAL_PARAMS, experiment_name  # noqa: F401 (re-exported)

EXPERIMENT_KIND = "mlflow.experimentKind"
TRIAL_RESULT_KEYS = TRIAL_METRICS + TRIAL_PARAMS + ("genotype", "position_scores")


def client_for(tracking_uri: str) -> MlflowClient:
    """A client of an existing store (telemetry off unless the user turned it on)."""
    import os
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    return MlflowClient(tracking_uri)


def mlflow_client(run):
    """The MLflow client of the run's tracking URI (a sqlite store's folder is made now, not before)."""
    import os

    from orchestrator.runtime.settings import create_sqlite_folder
    create_sqlite_folder(run.tracking_uri)
    os.environ.update(run.storage.mlflow_environment())  # MLflow's S3 artifacts use the same endpoint
    import mlflow
    mlflow.set_tracking_uri(run.tracking_uri)
    return client_for(run.tracking_uri)


def ensure_experiment(client: MlflowClient, name: str, artifact_root: str, tracking_uri: str) -> str:
    """An MLflow server decides where artifacts go (proxied `--artifacts-destination` or its default); with a
    local store they go under the artifact root, on disk or S3."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        if tracking_uri.startswith(("http://", "https://")):
            experiment_id = client.create_experiment(name)
        else:
            if artifact_root.startswith("s3://"):
                location = f"{artifact_root.rstrip('/')}/mlflow/{name}"
            else:
                root = Path(artifact_root[len("file://"):] if artifact_root.startswith("file://") else artifact_root)
                location = (root / "mlflow" / name).absolute().as_uri()
            experiment_id = client.create_experiment(name, artifact_location=location)
        experiment = client.get_experiment(experiment_id)
    if experiment.tags.get(EXPERIMENT_KIND) != "custom_model_development":
        # Without it MLflow 3's UI opens the experiment on an empty GenAI overview instead of its runs.
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND, "custom_model_development")
    return experiment.experiment_id


def start_parent(client: MlflowClient, experiment_id: str, *, run_name: str, tags: dict, params: dict,
                 command_line: str) -> str:
    """The search's parent run: its settings as params, and its command line as the run's description."""
    run = client.create_run(experiment_id, run_name=run_name,
                            tags={"acla_kind": "search", "mlflow.note.content": f"```\n{command_line[:4000]}\n```", **tags})
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
    return run.info.run_id


def summarise_parent(client: MlflowClient, parent_id: str, rows: list[dict]) -> None:
    """What the parent shows beside its children: its best PSNR, its trial count and the front's size."""
    mine = [r for r in rows if r["search_run_id"] == parent_id]
    metrics = {"trial_count": len(mine), "front_size": sum(1 for r in rows if r["pareto"])}
    if mine:
        metrics["best_psnr"] = max(r["psnr"] for r in mine)
    client.log_batch(parent_id, metrics=[Metric(k, float(v), 0, 0) for k, v in metrics.items()])


def end_parent(client: MlflowClient, parent_id: str, status: str) -> None:
    """FINISHED only when everything the run announces exists; FAILED on an error; KILLED on Ctrl-C/SIGTERM."""
    client.set_terminated(parent_id, status)


def reopen_parent(client: MlflowClient, parent_id: str) -> None:
    client.update_run(parent_id, status="RUNNING")


def close_stale_runs(client: MlflowClient, experiment_id: str, parent_id: str, status: str = "KILLED") -> None:
    """MLflow runs of this search still RUNNING (trials cut off, a retrain) are closed: KILLED when the driver
    died or was stopped, FAILED when the search failed."""
    for run in client.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}' and "
                                                                 f"attributes.status = 'RUNNING'"):
        client.set_terminated(run.info.run_id, status)


def start_trial_run(client: MlflowClient, experiment_id: str, parent_id: str, *, trial_id: str, params: dict,
                    search_tags: dict) -> str:
    """A trial's child run, created RUNNING when Tune starts the trial, with Optuna's proposal as params."""
    run = client.create_run(experiment_id, run_name=f"trial-{trial_id}",
                            tags={"mlflow.parentRunId": parent_id, "acla_kind": "trial", "trial_id": trial_id,
                                  **search_tags})
    client.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
    return run.info.run_id


# What a trial reports while it runs (trial.py's progress records), as MLflow metrics at the trial's step.
PROGRESS_METRICS = {("search", "train_loss"): "search_loss", ("search", "val_loss"): "search_val_loss",
                    ("search", "expected_macs"): "expected_macs_g", ("train", "loss"): "train_loss"}


def log_progress(client: MlflowClient, run_id: str, result: dict) -> None:
    """One progress report of a running trial: its losses (and the search's expected GMACs) at its step."""
    phase, step = result.get("progress_phase"), int(result.get("progress_step", 0))
    metrics = []
    for (kind, key), name in PROGRESS_METRICS.items():
        value = result.get(f"progress_{key}")
        if kind == phase and value is not None:
            metrics.append(Metric(name, float(value) / (1e9 if name.endswith("_g") else 1), 0, step))
    if metrics:
        client.log_batch(run_id, metrics=metrics)


def short_genotype_params(genotype: dict) -> dict:
    """What a person compares in the UI, in short forms: attention, positions 1,3,5 and keys 9|9+9."""
    return {"attention": genotype["attention"], "positions": ",".join(map(str, genotype["positions"])) or "none",
            "keys": "|".join("+".join(map(str, k)) for k in genotype["keys"]) or "none",
            "net": f"{genotype['channels']}x{genotype['blocks']}"}


NO_POSITION_PAYS = "no position pays at this budget"


def position_decision(scores: list[dict], positions: list[int]) -> str:
    """What a trial's significance rule decided, in words (its MLflow param `decision` and the summary's line)."""
    passed = [s["position"] for s in scores if s.get("passed")]
    if not passed:
        return (f"{NO_POSITION_PAYS}: none of the {len(scores)} positions' gains is significant "
                f"({scores[0].get('rule', 'the rule')}); the budget goes to width")
    kept = ", ".join(map(str, positions)) or "none"
    return (f"significant gains at positions {', '.join(map(str, passed))} ({scores[0].get('rule', 'the rule')}); "
            f"kept within the budget: {kept}")


def log_trial(client: MlflowClient, run_id: str, *, result: dict) -> str:
    """A trial's end on its run: the genotype's short params, the metrics (`macs_g` beside `macs`), the
    genotype and position-score JSON as artifacts; FINISHED."""
    genotype = json.loads(result["genotype"])
    fields = {**short_genotype_params(genotype), **{k: result[k] for k in TRIAL_PARAMS if k in result}}
    scores = json.loads(result.get("position_scores", "[]"))
    per_position = [Metric(f"position_{kind}_{s['position']}", float(s[kind]), 0, 0)
                    for s in scores for kind in ("score", "spread", "stderr", "passed", "prob", "active_keys")
                    if kind in s]
    if scores and "rule" in scores[0]:  # the significance rule and, in words, what it decided
        fields["significance_rule"] = scores[0]["rule"]
        fields["decision"] = position_decision(scores, genotype["positions"])
    metrics = [Metric(k, float(result[k]), 0, 0) for k in TRIAL_METRICS if k in result]
    metrics.append(Metric("macs_g", float(result["macs"]) / 1e9, 0, 0))
    client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in fields.items()], metrics=metrics + per_position)
    try:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "genotype.json"
            path.write_text(result["genotype"])
            client.log_artifact(run_id, str(path))
            from search_space.genotype import Genotype

            from orchestrator.tracking.drawing import draw_network
            draw_network(Genotype.from_json(result["genotype"]), str(Path(folder) / "network.png"))
            client.log_artifact(run_id, str(Path(folder) / "network.png"))
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


def log_failed_trial(client: MlflowClient, run_id: str, *, error: str) -> str:
    client.set_tag(run_id, "error", error[:4000])
    client.set_terminated(run_id, "FAILED")
    return run_id


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
                     "backbone": params.get("backbone", ""), "net": params.get("net", ""),
                     "positions": params.get("positions", ""),
                     "keys": params.get("keys", ""), "pareto": on_front,
                     **{k: float(run.data.metrics[k]) for k in TRIAL_METRICS if k in run.data.metrics}})
    return rows


def front_table(rows: list[dict], extra: tuple[str, ...] = ()) -> pa.Table:
    columns = ["run_id", "trial_id", "search_run_id", "budget_macs", "backbone", "positions", "keys", "pareto",
               *TRIAL_METRICS, *extra]
    return pa.table({c: [row.get(c) for row in rows] for c in columns})


def log_front(client: MlflowClient, parent_id: str, rows: list[dict], *, budget_macs: float, title: str,
              retrained: list[tuple[float, float]] = (), suffix: str = "", width: list[tuple[float, float]] = ()) -> None:
    """The front as Parquet and PNG artifacts of the parent run; `width`, the width line's (psnr, macs)."""
    with tempfile.TemporaryDirectory() as folder:
        table_path = Path(folder) / f"pareto_front{suffix}.parquet"
        pq.write_table(front_table(rows), table_path)
        plot_path = Path(folder) / f"pareto_front{suffix}.png"
        plot_front(str(plot_path), points=[(r["psnr"], r["macs"]) for r in rows], on_front=[r["pareto"] for r in rows],
                   budget_macs=budget_macs, title=title, retrained=retrained, labels=[point_label(r) for r in rows],
                   width=width)
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


def model_signature(in_channels: int):
    """The registered model's contract: float32 images (N, C, H, W) in [0, 1] in and out (H, W scaled for sr)."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec
    spec = Schema([TensorSpec(np.dtype(np.float32), (-1, in_channels, -1, -1))])
    return ModelSignature(inputs=spec, outputs=spec)


def model_description(genotype, task_label: str, budget_macs: float, retrained_psnr: float | None) -> str:
    from search_space.budget import short_budget
    where = (f"{genotype.attention.upper()} after blocks {', '.join(map(str, genotype.positions))} (keys per "
             f"reference layer: {'; '.join('+'.join(map(str, k)) for k in genotype.keys) or 'all'})"
             if genotype.positions else "no attention module (plain backbone)")
    score = f"; retrained PSNR {retrained_psnr:.2f} dB" if retrained_psnr is not None else ""
    return (f"{task_label}, searched within {short_budget(budget_macs)}MACs: a {genotype.channels}-channel x "
            f"{genotype.blocks}-block EDSR-style net, {where}{score}. The full genotype is genotype.json of the "
            f"model set and the `genotype` param of its run.")


def log_retrain(client: MlflowClient, experiment_id: str, parent_id: str, *, winner, registered: str, metrics: dict,
                params: dict, tags: dict, checkpoint_file: str, description: str) -> tuple[str, str]:
    """A retrain run linked to its trial, with its metrics, params and checkpoint, and the model registered as a
    new version of `registered` (with a signature, an input example and a description); returns (run id,
    version)."""
    import mlflow
    import mlflow.pyfunc
    import numpy as np
    run = client.create_run(experiment_id, run_name=f"retrain-{winner.trial}",
                            tags={"mlflow.parentRunId": parent_id, "acla_kind": "retrain",
                                  "trial_run_id": winner.run_id, "trial_id": winner.trial, **tags})
    with mlflow.start_run(run_id=run.info.run_id):
        mlflow.log_metrics({k: v for k, v in metrics.items() if k != "step"})
        mlflow.log_params(params)
        mlflow.log_artifact(checkpoint_file, "checkpoint")
        # A model from code: the checkpoint (tensors and JSON, read with weights_only) beside the loader's
        # source; nothing of the registered model is a pickle.
        in_channels = winner.genotype.in_channels
        info = mlflow.pyfunc.log_model(name="model", python_model=MODEL_CODE, artifacts={"checkpoint": checkpoint_file},
                                       registered_model_name=registered, pip_requirements=MODEL_PIP_REQUIREMENTS,
                                       signature=model_signature(in_channels),
                                       input_example=np.full((1, in_channels, 16, 16), 0.5, np.float32))
    version = info.registered_model_version
    client.update_model_version(registered, version, description=description)
    client.update_registered_model(registered, description="Restoration networks found by acla-orch for this task "
                                                           "variant; each version names its genotype and budget.")
    return run.info.run_id, version


def finish_retrain(client: MlflowClient, retrain_id: str, winner, *, model_set_uri: str, registered: str, version: str,
                   alias: str | None, retrained_psnr: float) -> None:
    """Where the model set landed, the budget's alias (when given) and the trial's retrained score."""
    client.set_tag(retrain_id, "model_set_uri", model_set_uri)
    if alias:
        client.set_registered_model_alias(registered, alias, version)
    client.log_batch(winner.run_id, metrics=[Metric("retrained_psnr", float(retrained_psnr), 0, 0)])


def log_evaluation(tracking_uri: str, run_id: str, image_set: str, mean: dict, precision: str = "fp32") -> None:
    """`evaluate`'s means on the model's own run, one metric per score: `eval_<set>_psnr_y`, ..., and the
    precision the network ran in as the tag `eval_<set>_precision`."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in image_set)
    client = MlflowClient(tracking_uri)
    client.log_batch(run_id, metrics=[Metric(f"eval_{safe}_{key}", float(value), 0, 0) for key, value in mean.items()],
                     tags=[RunTag(f"eval_{safe}_precision", precision)])
