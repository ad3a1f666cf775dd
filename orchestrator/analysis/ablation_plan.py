"""An ablation that survives being cut off: its plan and every finished training are kept in object storage,
so `acla-orch ablate ... --resume ID` trains only what is missing.

Layout under `ablations/<experiment>/<ID>/` (the store of the run's settings, local or S3):
- `plan.json`, written before any training: the settings that decide what is trained (task, budget, profile,
  schedule, seeds, variants, evaluation images) and the variants themselves, searched genotype included, so a
  resume neither searches again nor draws other random placements;
- `<variant>[-p<placement>]-s<seed>/`: a manifest-checked set of `model.pt` and `result.json`, uploaded by the
  training's own Ray task when it ends (the manifest last: a set cut off mid-upload has none and is retrained).
"""
from __future__ import annotations

import json

from orchestrator.runtime.errors import UsageError

PLAN = "plan.json"


def ablation_prefix(experiment: str, ablation_id: str) -> str:
    return f"ablations/{experiment}/{ablation_id}"


def training_key(prefix: str, variant, seed: int) -> str:
    """Where one variant's training of `seed` keeps its model and scores."""
    placement = "" if variant.placement is None else f"-p{variant.placement}"
    return f"{prefix}/{variant.name}{placement}-s{seed}"


SETTINGS_BEFORE = {"precision": "fp32"}  # what a plan written before a setting existed ran with


def write_plan(store, prefix: str, settings: dict, searched, variants, skipped: dict, scores,
               command: str) -> None:
    plan = {"settings": settings, "command": command, "searched_genotype": searched.to_dict(), "skipped": skipped,
            "position_scores": scores,
            "variants": [{"name": v.name, "genotype": v.genotype.to_dict(), "macs": v.macs,
                          "within_budget": v.within_budget, "placement": v.placement} for v in variants]}
    store.put_bytes(json.dumps(plan, indent=1).encode(), f"{prefix}/{PLAN}")


def read_plan(store, prefix: str, ablation_id: str, settings: dict):
    """The searched genotype, variants, skipped variants and position scores of ablation `ablation_id`, whose
    settings must equal `settings`; a UsageError (one line) where there is no such ablation or it differs."""
    from search_space.genotype import Genotype
    from storage.stores import StorageError
    from workers.ablation import Variant
    try:
        plan = json.loads(store.get_bytes(f"{prefix}/{PLAN}")) if store.exists(f"{prefix}/{PLAN}") else None
    except (StorageError, json.JSONDecodeError) as err:
        raise UsageError(f"--resume {ablation_id}: its plan cannot be read ({err}); start a new ablation "
                         f"without --resume") from None
    if plan is None:
        raise UsageError(f"--resume {ablation_id}: no such ablation of {settings['task']} in {store.uri('ablations')}; "
                         f"expected the ID an earlier `acla-orch ablate` printed")
    stored = {**SETTINGS_BEFORE, **plan["settings"]}
    differing = [key for key in settings if stored.get(key) != settings[key]]
    if differing:
        key = differing[0]
        raise UsageError(f"--resume {ablation_id}: that ablation ran with {key} {stored.get(key)!r}, not "
                         f"{settings[key]!r}; give the same arguments, or start a new ablation without --resume")
    variants = [Variant(v["name"], Genotype.from_dict(v["genotype"]), v["macs"], v["within_budget"], v["placement"])
                for v in plan["variants"]]
    return Genotype.from_dict(plan["searched_genotype"]), variants, plan["skipped"], plan["position_scores"]


def finished_training(store, key: str) -> dict | None:
    """The scores of a training kept under `key` with its checkpoint's URI, or None where it is not (fully)
    there: no manifest, a file that does not match it, or unreadable scores."""
    from storage.manifest import verify_artifact_set
    from storage.stores import StorageError
    try:
        manifest = verify_artifact_set(store, key)
        if "result.json" not in manifest["files"] or "model.pt" not in manifest["files"]:
            return None
        result = json.loads(store.get_bytes(f"{key}/result.json"))
    except (StorageError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return {**result, "checkpoint": store.uri(f"{key}/model.pt")}


def ablation_rows(store, recorded: set[str], experiment: str | None = None) -> list[dict]:
    """Every ablation with a plan in `store` (of one experiment, where given): its ID, task, schedule, how many
    of its trainings are kept, and whether it was recorded in MLflow (`recorded` holds those IDs); one not
    recorded says how to go on with it."""
    rows = []
    for key in store.list("ablations" if experiment is None else f"ablations/{experiment}"):
        if not key.endswith(f"/{PLAN}"):
            continue
        prefix, ablation_id = key.rsplit("/", 1)[0], key.split("/")[-2]
        try:
            plan = json.loads(store.get_bytes(key))
            settings = plan["settings"]
            total = len(plan["variants"]) * len(settings["seeds"])
        except (ValueError, KeyError, TypeError):
            continue  # not a plan this release wrote
        kept = sum(name.endswith("/manifest.json") for name in store.list(prefix))
        done = ablation_id in recorded
        rows.append({"id": ablation_id, "task": settings["task"], "steps": settings["steps"],
                     "variants": settings["variants"], "trainings": total, "kept": kept, "recorded": done,
                     "resume": None if done else f"{plan.get('command', 'acla-orch ablate ...')} --resume {ablation_id}"})
    return rows
