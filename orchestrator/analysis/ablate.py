"""`acla-orch ablate`: the searched placement against the plain backbone, width at equal MACs, non-local,
fixed-key CLA, ACLA everywhere and random placements of the same cost, trained alike on paired seeds and scored
on images no step has seen (workers/ablation.py).

The recipe: check the input -> search (or read --genotype) -> build the variants within the budget and keep
them as the ablation's plan (or, with --resume, read the plan kept) -> train every variant and seed not yet kept,
as parallel Ray tasks -> record a parent MLflow run with a child per variant,
a Markdown table and a chart -> print the table (or JSON).
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path



def train_variant_task(kwargs: dict, storage, prefix: str) -> dict:
    """One variant and seed inside a Ray task: train on one thread per granted CPU, upload the checkpoint as a
    manifest-checked set, return the scores with the checkpoint's URI."""
    from storage.manifest import put_artifact_set
    from storage.stores import open_store
    from workers.ablation import train_variant

    from orchestrator.runtime.cluster import use_granted_cpus
    use_granted_cpus()
    with tempfile.TemporaryDirectory() as folder:
        local, scores = Path(folder) / "model.pt", Path(folder) / "result.json"
        result = train_variant(**kwargs, checkpoint_path=str(local))
        scores.write_text(json.dumps({k: v for k, v in result.items() if k != "checkpoint"}))
        manifest = put_artifact_set(open_store(storage), prefix, {"model.pt": local, "result.json": scores})
    return {**result, "checkpoint": manifest.rsplit("/", 1)[0] + "/model.pt"}


def run_variants(variants, *, task, data, profile, steps, seeds, storage, prefix, resume: bool) -> list[dict]:
    """Every variant and seed as a Ray task, as many at once as the cluster's CPUs allow (one CPU each). With
    `resume`, a training already kept in storage is read back instead of trained again."""
    import ray
    from storage.stores import open_store
    from orchestrator.analysis.ablation_plan import finished_training, training_key
    store = open_store(storage)
    remote = ray.remote(num_cpus=1)(train_variant_task)
    runs = []
    for v in variants:
        for seed in seeds:
            key = training_key(prefix, v, seed)
            kept = finished_training(store, key) if resume else None
            runs.append(kept if kept is not None else remote.remote(
                {"name": v.name, "genotype": v.genotype, "task": task, "data": data, "profile": profile,
                 "steps": steps, "seed": seed, "placement": v.placement}, storage, key))
    if resume:
        print(f"acla-orch: ablate: {sum(isinstance(r, dict) for r in runs)} of {len(runs)} trainings kept from "
              f"before; training the rest", file=sys.stderr)
    trained = iter(ray.get([r for r in runs if not isinstance(r, dict)]))
    return [r if isinstance(r, dict) else next(trained) for r in runs]


def plot_ablation(path: str, rows: list[dict], budget_macs: float, title: str) -> None:
    """Mean PSNR-Y against GMACs per variant, with the seeds' range as error bars and the budget line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=110)
    for row in rows:
        for placement in row.get("placements", []):  # acla-random's placements, each its mean over seeds
            axes.plot(placement["macs"] / 1e9, placement["psnr_y"], "x", color="grey", alpha=0.7)
        low, high = min(row["psnr_y_seeds"]), max(row["psnr_y_seeds"])
        axes.errorbar(row["macs"] / 1e9, row["psnr_y"], yerr=[[row["psnr_y"] - low], [high - row["psnr_y"]]],
                      fmt="o", capsize=4, label=row["name"])
    axes.axvline(budget_macs / 1e9, color="k", ls="--", lw=1, label=f"budget {budget_macs / 1e9:g} GMACs")
    axes.set_xlabel("cost (GMACs)")
    axes.set_ylabel("PSNR-Y on unseen images (dB), mean and range over seeds")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def record_ablation(client, experiment_id, *, tags, rows, runs, report) -> str:
    """The ablation's table, JSON and chart written to a temporary folder, then recorded in MLflow (orchestrator/tracking/runs.py):
    a parent run with them as artifacts, and a child run per variant."""
    from orchestrator.tracking.runs import log_ablation
    with tempfile.TemporaryDirectory() as folder:
        for name, text in (("ablation.md", report["markdown"]), ("ablation.json", json.dumps(report, indent=1))):
            (Path(folder) / name).write_text(text)
        plot_ablation(str(Path(folder) / "ablation.png"), rows, report["budget_macs"], f"{tags['task']}: ablation")
        return log_ablation(client, experiment_id, tags=tags, rows=rows, runs=runs, folder=folder)

