"""After the trials: each trial's genotype and the trial table into the artifact store, the winners picked,
retrained on Ray Train and registered in MLflow's model registry under the budget's alias."""
from __future__ import annotations

import os
from pathlib import Path

MODEL_PIP_REQUIREMENTS = ["torch==2.13.0", "acla-orch"]
MODEL_CODE = str(Path(__file__).with_name("mlflow_model.py"))  # the registered model's loader: no pickle


def retrain_winners(*, run, store, client, experiment_id, parent_id, request_settings, winners, retrain_workers,
                    set_alias: bool = True):
    """Ray Train each winner; log it as a run linked to its trial; register the model, and point the budget's
    alias at the best winner when `set_alias` (a search does; `retrain` only with --set-alias)."""
    import mlflow
    import mlflow.pyfunc
    from search_space.genotype import Genotype

    from storage.manifest import put_artifact_set

    from .driver import budget_label
    from .retrain import CHECKPOINT_FILE, retrain_genotype

    settings = request_settings
    registered = f"acla-{settings.task.name}"
    alias = budget_label(settings.budget_macs)
    outcomes = []
    for rank, winner in enumerate(winners):
        genotype = Genotype.from_json(winner["result"]["genotype"])
        outcome = retrain_genotype(genotype=genotype, task=settings.task, profile_name=settings.profile.name,
                                   data=settings.data, storage=run.storage,
                                   name=f"retrain-{winner['trial']}", num_workers=retrain_workers,
                                   steps=settings.profile.retrain_steps, seed=settings.seed)
        # Ray Train wrote the checkpoint; its manifest marks it complete for every later reader.
        put_artifact_set(store, outcome.checkpoint_key, {CHECKPOINT_FILE: outcome.checkpoint_file})
        run_obj = client.create_run(experiment_id, run_name=f"retrain-{winner['trial']}",
                                    tags={"mlflow.parentRunId": parent_id, "acla_kind": "retrain",
                                          "trial_run_id": winner["run_id"], "trial_id": winner["trial"],
                                          "budget_macs": str(int(settings.budget_macs))})
        retrain_id = run_obj.info.run_id
        headline = settings.task.headline_metric
        metrics = {k: float(v) for k, v in outcome.metrics.items() if isinstance(v, (int, float))}
        with mlflow.start_run(run_id=retrain_id):
            mlflow.log_metrics({k: v for k, v in metrics.items() if k != "step"})
            mlflow.log_params({"checkpoint_uri": outcome.checkpoint_uri, "workers": retrain_workers,
                               "steps": settings.profile.retrain_steps, "genotype": genotype.to_json()[:6000]})
            mlflow.log_artifact(outcome.checkpoint_file, "checkpoint")
            # A model from code: the checkpoint (tensors and JSON, read with weights_only) beside the loader's
            # source; nothing of the registered model is a pickle.
            info = mlflow.pyfunc.log_model(name="model", python_model=MODEL_CODE,
                                           artifacts={"checkpoint": outcome.checkpoint_file},
                                           registered_model_name=registered, pip_requirements=MODEL_PIP_REQUIREMENTS)
        version = info.registered_model_version
        genotype_file = Path(outcome.checkpoint_file).with_name("genotype.json")
        genotype_file.write_text(genotype.to_json())
        model_set = put_artifact_set(store, f"models/{registered}/v{version}",
                                     {CHECKPOINT_FILE: outcome.checkpoint_file, "genotype.json": genotype_file})
        client.set_tag(retrain_id, "model_set_uri", model_set.rsplit("/", 1)[0])
        aliased = set_alias and rank == 0  # the alias names the best winner of this budget
        if aliased:
            client.set_registered_model_alias(registered, alias, version)
        client.set_tag(winner["run_id"], "retrained_psnr", f"{metrics.get(headline, float('nan')):.4f}")
        outcomes.append({"trial": winner["trial"], "trial_run_id": winner["run_id"], "run_id": retrain_id,
                         "psnr": metrics.get("psnr"), "macs": winner["result"]["macs"],
                         "checkpoint_uri": outcome.checkpoint_uri, "model_set_uri": model_set.rsplit("/", 1)[0],
                         "model_uri": f"models:/{registered}/{version}",
                         "alias": f"models:/{registered}@{alias}" if aliased else None})
    return outcomes


def _write_temp(text: str) -> str:
    import tempfile
    handle = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
    with handle:
        handle.write(text)
    return handle.name


def record_trials(store, experiment: str, parent_id: str, recorded: list[dict], rows: list[dict]) -> None:
    """Each trial's genotype as a manifest-checked set, and this search's trials appended to the Parquet table."""
    from storage.manifest import put_artifact_set
    from storage.trial_table import append_trials

    from .tracking import front_table
    uris = {}
    for item in recorded:
        path = _write_temp(item["result"]["genotype"])
        try:
            uris[item["run_id"]] = put_artifact_set(store, f"genotypes/{experiment}/{item['run_id']}",
                                                    {"genotype.json": path}).rsplit("/", 1)[0]
        finally:
            os.unlink(path)
    mine = [{**row, "genotype_uri": uris.get(row["run_id"], ""), "artifact_uri": next(
        (r["artifact_uri"] for r in recorded if r["run_id"] == row["run_id"]), "")}
        for row in rows if row["search_run_id"] == parent_id]
    append_trials(store, experiment, parent_id, front_table(mine, extra=("genotype_uri", "artifact_uri")))


def pick_winners(recorded: list[dict], front_ids: set[str], top: int) -> list[dict]:
    """The best PSNR within the budget, or the top-k front members (by PSNR) when top > 1."""
    ranked = sorted(recorded, key=lambda r: r["result"]["psnr"], reverse=True)
    if top == 1:
        return ranked[:1]
    return [r for r in ranked if r["run_id"] in front_ids][:top]
