"""After the trials: each trial's genotype and the trial table into the artifact store, the winners picked,
retrained on Ray Train and registered in MLflow's model registry under the budget's alias."""
from __future__ import annotations

import os
from pathlib import Path

from orchestrator.runtime.records import TrialRecord



def worse_than_input(metrics: dict, color: bool) -> str | None:
    """Why a retrained model may not take the budget's alias: it scores below its own degraded input on the
    validation images in a channel its task is scored in (Y, and RGB for a colour model). None when it beats the
    input in each."""
    channels = ("y", "rgb") if color else ("y",)
    worse = [c for c in channels if f"psnr_{c}" in metrics and f"input_psnr_{c}" in metrics
             and metrics[f"psnr_{c}"] <= metrics[f"input_psnr_{c}"]]
    if not worse:
        return None
    figures = ", ".join(f"{c.upper()} {metrics[f'psnr_{c}']:.2f} dB against the input's {metrics[f'input_psnr_{c}']:.2f}"
                        for c in channels if f"psnr_{c}" in metrics and f"input_psnr_{c}" in metrics)
    return f"no alias: the retrained model is worse than its input in {' and '.join(c.upper() for c in worse)} ({figures})"


def trial_top_up(settings, winner) -> tuple[int, object] | None:
    """(steps, a function running them as a Ray task) where the winner trained fewer proxy steps than a search's
    trial (a sweep's, fine-tuned from its supernet: workers/profiles.py's sweep_train_steps); None otherwise,
    and for trials recorded before their steps were (they trained the full proxy schedule)."""
    done = winner.result.get("proxy_steps")
    missing = settings.profile.train_steps - int(done) if done is not None else 0
    if missing <= 0:
        return None

    def run_top_up(genotype, state, steps):
        import ray

        from orchestrator.runtime.cluster import node_shapes, trial_resources
        resources = trial_resources(node_shapes(ray), 1)  # a trial's alone: a GPU, or one node's CPUs
        task = ray.remote(num_cpus=resources["cpu"], num_gpus=resources["gpu"])(ray_top_up)
        return ray.get(task.remote(settings, genotype, state, steps, settings.seed))
    return missing, run_top_up


def ray_top_up(settings, genotype, state: dict, steps: int, seed: int) -> dict:
    """Ray's view of inherit.top_up_trial (a task): as many torch threads as CPUs granted."""
    from orchestrator.runtime.cluster import use_granted_cpus
    from orchestrator.retrain.inherit import top_up_trial
    use_granted_cpus()
    return top_up_trial(settings, genotype, state, steps, seed)


def retrain_winners(*, run, store, client, experiment_id, parent_id, request_settings, winners, retrain_workers,
                    set_alias: bool = True):
    """Ray Train each winner; log it as a run linked to its trial; register the model, and point the budget's
    alias at the best winner when `set_alias` (a search does; `retrain` only with --set-alias)."""
    from storage.manifest import put_artifact_set

    from orchestrator.runtime.errors import raise_if_cancelled
    from orchestrator.runtime.records import budget_label
    from orchestrator.retrain.inherit import inherited_state
    from orchestrator.retrain.ray_train import CHECKPOINT_FILE, retrain_genotype
    from orchestrator.tracking.runs import finish_retrain, log_retrain, model_description

    settings = request_settings
    from orchestrator.tracking.runs import experiment_name
    registered = experiment_name(settings.task.label)  # the model is registered per task variant
    alias = budget_label(settings.budget_macs)
    outcomes = []
    for rank, winner in enumerate(winners):
        genotype = winner.genotype
        init_state, init = inherited_state(store, winner.run_id, genotype, winner.result.get("proxy_channels"),
                                           seed=settings.seed, top_up=trial_top_up(settings, winner))
        steps = settings.profile.retraining_steps(inherited=init_state is not None)
        init = f"{init}, {steps} steps"
        outcome = retrain_genotype(genotype=genotype, task=settings.task, profile_name=settings.profile.name,
                                   precision=settings.profile.precision,
                                   data=settings.data, storage=run.storage,
                                   name=f"retrain-{winner.trial}", num_workers=retrain_workers,
                                   steps=steps, seed=settings.seed, init_state=init_state)
        raise_if_cancelled()  # a signal dropped while Ray Train ran (runtime/errors.py): nothing is registered
        # Ray Train wrote the checkpoint; its manifest marks it complete for every later reader.
        put_artifact_set(store, outcome.checkpoint_key, {CHECKPOINT_FILE: outcome.checkpoint_file})
        metrics = {k: float(v) for k, v in outcome.metrics.items() if isinstance(v, (int, float))}
        retrain_id, version = log_retrain(
            client, experiment_id, parent_id, winner=winner, registered=registered, metrics=metrics,
            params={"checkpoint_uri": outcome.checkpoint_uri, "workers": retrain_workers,
                    "precision": settings.profile.precision,
                    "steps": steps, "init": init, "genotype": genotype.to_json()[:6000]},
            tags={"budget_macs": str(int(settings.budget_macs))}, checkpoint_file=outcome.checkpoint_file,
            description=model_description(genotype, settings.task.label, settings.budget_macs,
                                          metrics.get(settings.task.headline_metric)))
        genotype_file = Path(outcome.checkpoint_file).with_name("genotype.json")
        genotype_file.write_text(genotype.to_json())
        model_set = put_artifact_set(store, f"models/{registered}/v{version}",
                                     {CHECKPOINT_FILE: outcome.checkpoint_file, "genotype.json": genotype_file})
        # The alias names the best winner of this budget, when it improves on its input in every scored channel.
        withheld = worse_than_input(metrics, color=settings.task.in_channels == 3) if set_alias and rank == 0 else None
        aliased = set_alias and rank == 0 and withheld is None
        finish_retrain(client, retrain_id, winner, model_set_uri=model_set.rsplit("/", 1)[0], registered=registered,
                       version=version, alias=alias if aliased else None,
                       retrained_psnr=metrics.get(settings.task.headline_metric, float("nan")))
        outcomes.append({"trial": winner.trial, "trial_run_id": winner.run_id, "run_id": retrain_id,
                         "psnr": metrics.get("psnr"), "macs": winner.macs,
                         "checkpoint_uri": outcome.checkpoint_uri, "model_set_uri": model_set.rsplit("/", 1)[0],
                         "model_uri": f"models:/{registered}/{version}",
                         "psnr_y": metrics.get("psnr_y"), "psnr_rgb": metrics.get("psnr_rgb"),
                         "input_psnr_y": metrics.get("input_psnr_y"), "input_psnr_rgb": metrics.get("input_psnr_rgb"),
                         "trial_psnr": winner.psnr, "alias_withheld": withheld, "init": init,
                         "alias": f"models:/{registered}@{alias}" if aliased else None})
    return outcomes


def _write_temp(text: str) -> str:
    import tempfile
    handle = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
    with handle:
        handle.write(text)
    return handle.name


def record_trials(store, experiment: str, parent_id: str, recorded: list[TrialRecord], rows: list[dict]) -> None:
    """Each trial's genotype as a manifest-checked set, and this search's trials appended to the Parquet table."""
    from storage.manifest import put_artifact_set
    from storage.trial_table import append_trials

    from orchestrator.tracking.runs import front_table
    uris = {}
    for item in recorded:
        path = _write_temp(item.result["genotype"])
        try:
            uris[item.run_id] = put_artifact_set(store, f"genotypes/{experiment}/{item.run_id}",
                                                    {"genotype.json": path}).rsplit("/", 1)[0]
        finally:
            os.unlink(path)
    mine = [{**row, "genotype_uri": uris.get(row["run_id"], ""), "artifact_uri": next(
        (r.artifact_uri for r in recorded if r.run_id == row["run_id"]), "")}
        for row in rows if row["search_run_id"] == parent_id]
    append_trials(store, experiment, parent_id, front_table(mine, extra=("genotype_uri", "artifact_uri")))


def pick_winners(recorded: list[TrialRecord], front_ids: set[str], top: int) -> list[TrialRecord]:
    """The best PSNR within the budget, or the top-k front members (by PSNR) when top > 1."""
    ranked = sorted(recorded, key=lambda r: r.psnr, reverse=True)
    if top == 1:
        return ranked[:1]
    return [r for r in ranked if r.run_id in front_ids][:top]
