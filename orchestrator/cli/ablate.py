"""`acla-orch ablate`: its flags read and checked, the search run (or --genotype read), the variants built and kept
as the ablation's plan, then trained, recorded and shown by orchestrator/analysis/ablate.py.

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
import uuid
from pathlib import Path

from orchestrator.analysis.ablate import record_ablation, run_variants
from orchestrator.runtime.errors import UsageError


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
    from orchestrator.runtime.inputs import read_genotype
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


def ablation_settings(args, task, profile, steps: int, seeds: list[int]) -> dict:
    """What decides an ablation's trainings, as given on its command line: a resume must give the same."""
    from orchestrator.runtime.inputs import read_genotype
    return {"task": task.label, "budget_macs": int(args.budget), "profile": profile.name, "steps": steps,
            "seeds": list(seeds), "variants": list(args.variants), "attention": args.attention,
            "search_steps": profile.search_steps, "search_warmup": profile.search_warmup,
            "precision": profile.precision,
            "data": None if args.data is None else str(Path(args.data).resolve()),
            "eval_data": None if args.eval_data is None else str(Path(args.eval_data).resolve()),
            "genotype": read_genotype(args.genotype).to_dict() if args.genotype else None}


def command_line(argv: list[str]) -> str:
    """The ablate command as a user types it, any password in a URI hidden: it is stored (the plan, MLflow)."""
    from orchestrator.runtime.settings import redacted_command
    return redacted_command(["acla-orch", *argv[1:]])


def command_ablate(args: argparse.Namespace) -> int:
    from storage.stores import open_store
    from workers.ablation import AblationError, check_backbone_budget, markdown_table, summarise_variants
    from orchestrator.analysis.ablation_plan import ablation_prefix, read_plan, write_plan
    from orchestrator.runtime.records import experiment_name
    from orchestrator.cli.platform import settings_from_args
    from orchestrator.cli.local import data_from_args, profile_from_args, search_profile, task_spec_from_args
    from orchestrator.runtime.inputs import check_training_data, user_errors

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
    from orchestrator.runtime.ray_session import ray_session  # Ray and MLflow, once every input has passed its checks
    from orchestrator.tracking.runs import ensure_experiment, mlflow_client
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
