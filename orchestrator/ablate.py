"""`acla-orch ablate`: the searched placement against the plain backbone, width at equal MACs, non-local,
fixed-key CLA, ACLA everywhere and random placements of the same cost, trained alike on paired seeds and scored
on images no step has seen (workers/ablation.py).

The recipe: check the input -> search (or read --genotype) -> build the variants within the budget and keep
them as the ablation's plan (or, with --resume, read the plan kept) -> train every variant and seed not yet kept,
as parallel Ray tasks -> record a parent MLflow run with a child per variant,
a Markdown table and a chart -> print the table (or JSON).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import tempfile
import uuid
from pathlib import Path

from .errors import UsageError



def eval_set_from_args(args, data):
    """The clean images the variants are scored on: --eval-data, else the validation split (never trained on)."""
    from workers.data import DataError, ImageSet, list_images
    if args.eval_data is None:
        return data.valid
    try:
        return ImageSet(Path(args.eval_data).name, list_images(args.eval_data))
    except DataError as err:
        raise UsageError(f"--eval-data {err}") from None


def searched_genotype(args, task, profile, data, budget):
    """--genotype, else the differentiable search at the profile's backbone (full width: what is trained here).
    Returns the genotype, acla-all's key counts, and the position scores (None for a given genotype)."""
    from .local_commands import read_genotype
    if args.genotype:
        genotype = read_genotype(args.genotype)
        if (genotype.task, genotype.scale, genotype.in_channels) != (task.name, task.scale, task.in_channels):
            raise UsageError(f"genotype {args.genotype} is for {genotype.task} x{genotype.scale}, not {task.label}")
        return genotype, None, None
    from search_space.search import derived_keys
    from workers.search_run import SearchConfig, position_scores, run_search
    config = SearchConfig(task=task, budget_macs=budget, channels=profile.channels, blocks=profile.blocks,
                          stages=profile.stages, max_keys=profile.max_keys, attention=args.attention,
                          weight_lr=profile.weight_lr, arch_lr=profile.arch_lr, seed=args.seed)
    found = run_search(config, data, dataclasses.replace(profile, proxy_width=1.0))
    base, outcome = found.genotype, found.outcome
    all_keys = [derived_keys(base, p, outcome.active_keys[p], outcome.key_caps[p] if outcome.key_caps else None)
                for p in range(base.blocks)]
    return base, all_keys, position_scores(found.outcome)


def train_variant_task(kwargs: dict, storage, prefix: str) -> dict:
    """One variant and seed inside a Ray task: train on one thread per granted CPU, upload the checkpoint as a
    manifest-checked set, return the scores with the checkpoint's URI."""
    from storage.manifest import put_artifact_set
    from storage.stores import open_store
    from workers.ablation import train_variant

    from .driver import use_granted_cpus
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
    from .ablation_plan import finished_training, training_key
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
    """The ablation's table, JSON and chart written to a temporary folder, then recorded in MLflow (tracking.py):
    a parent run with them as artifacts, and a child run per variant."""
    from .tracking import log_ablation
    with tempfile.TemporaryDirectory() as folder:
        for name, text in (("ablation.md", report["markdown"]), ("ablation.json", json.dumps(report, indent=1))):
            (Path(folder) / name).write_text(text)
        plot_ablation(str(Path(folder) / "ablation.png"), rows, report["budget_macs"], f"{tags['task']}: ablation")
        return log_ablation(client, experiment_id, tags=tags, rows=rows, runs=runs, folder=folder)


def build_requested_variants(args, searched, all_keys):
    """The variants asked for. acla-random asked for by name must fit (else AblationError); among the default
    variants it is left out, with one line on stderr, where the budget leaves no random placement of the searched
    cost (a search that kept no position has none). Returns the variants and what was left out, and why."""
    from workers.ablation import AblationError, VARIANTS, build_variants
    try:
        return build_variants(searched, args.budget, all_keys, names=args.variants, seed=args.seed), {}
    except AblationError as err:
        if not (str(err).startswith("variant acla-random") and tuple(args.variants) == VARIANTS):
            raise
        print(f"acla-orch: ablate: acla-random left out: {err}", file=sys.stderr)
        names = [name for name in args.variants if name != "acla-random"]
        return build_variants(searched, args.budget, all_keys, names=names, seed=args.seed), {"acla-random": str(err)}


def command_line(argv: list[str]) -> str:
    """The ablate command as a user types it, any password in a URI hidden: it is stored (the plan, MLflow)."""
    from .cli import redacted_command
    return redacted_command(["acla-orch", *argv[1:]])


def command_ablate(args: argparse.Namespace) -> int:
    from storage.stores import open_store
    from workers.ablation import AblationError, check_backbone_budget, markdown_table, summarise_variants
    from .ablation_plan import ablation_prefix, ablation_settings, read_plan, write_plan
    from .records import experiment_name
    from .settings import settings_from_args
    from .local_commands import (check_training_data, data_from_args, profile_from_args, search_profile,
                                 task_spec_from_args, user_errors)

    task, profile = task_spec_from_args(args), search_profile(args, profile_from_args(args))
    data = data_from_args(args)
    check_training_data(data, task, profile)
    eval_set = eval_set_from_args(args, data)
    steps, seeds = args.steps or profile.retrain_steps, list(range(args.seed, args.seed + args.seeds))
    ablation_id = args.resume or uuid.uuid4().hex[:12]
    with user_errors():
        try:
            if not args.genotype:
                check_backbone_budget(task, profile, args.budget)
            run, _ = settings_from_args(args)  # every target checked before the search starts
            settings = ablation_settings(args, task, profile, steps, seeds)
            store = open_store(run.storage)
            prefix = ablation_prefix(experiment_name(task.label), ablation_id)
            if args.resume:  # the plan kept in storage: no second search, the same random placements
                searched, variants, skipped, scores = read_plan(store, prefix, ablation_id, settings)
            else:
                searched, all_keys, scores = searched_genotype(args, task, profile, data, args.budget)
                variants, skipped = build_requested_variants(args, searched, all_keys)
                write_plan(store, prefix, settings, searched, variants, skipped, scores, command_line(sys.argv))
        except AblationError as err:
            raise UsageError(str(err)) from None
    print(f"acla-orch: ablate: ablation {ablation_id}; if it is cut off, run the same command with --resume "
          f"{ablation_id}", file=sys.stderr)
    from .ray_session import ray_session  # Ray and MLflow, once every input has passed its checks
    from .tracking import ensure_experiment, mlflow_client
    client = mlflow_client(run)
    experiment_id = ensure_experiment(client, experiment_name(task.label), run.artifact_root, run.tracking_uri)
    with user_errors(), contextlib.redirect_stdout(sys.stderr), ray_session(run):
        runs = run_variants(variants, task=task, data=dataclasses.replace(data, valid=eval_set), profile=profile,
                            steps=steps, seeds=seeds, storage=run.storage, prefix=prefix, resume=bool(args.resume))
    rows = summarise_variants(runs)
    for row in rows:
        row["within_budget"] = next(v.within_budget for v in variants if v.name == row["name"])
    report = {"task": task.label, "budget_macs": int(args.budget), "steps": steps, "seed": args.seed,
              "precision": profile.precision,
              "seeds": len(seeds), "attention": searched.attention, "skipped": skipped,
              "eval_data": args.eval_data or f"{eval_set.name} (embedded validation split)",
              "searched_genotype": searched.to_dict(), "position_scores": scores, "variants": rows,
              "markdown": markdown_table(rows, args.budget), "ablation_id": ablation_id}
    tags = {"task": task.label, "budget_macs": str(int(args.budget)), "profile": profile.name, "steps": str(steps),
            "search_steps": str(profile.search_steps), "search_warmup": str(profile.search_warmup),
            "precision": profile.precision, "seeds": str(len(seeds)), "eval_data": report["eval_data"], "ablation_id": ablation_id,
            "command_line": command_line(sys.argv)[:4000]}
    report["parent_run_id"] = record_ablation(client, experiment_id, tags=tags, rows=rows, runs=runs, report=report)
    if args.json:
        print(json.dumps({k: v for k, v in report.items() if k != "markdown"}))
    else:
        print(report["markdown"], end="")
    return 0
