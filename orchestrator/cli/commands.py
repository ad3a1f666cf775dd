"""The verbs that read a search's records: pareto, status and retrain. Each checks its inputs and targets first.
`search` and `sweep` are in main.py (the recipe: orchestrator/search/job.py), `resume` in resume.py, `ablate` in
ablate.py, `report` in report.py; retraining and registration are orchestrator/retrain/winners.py.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
from pathlib import Path

from orchestrator.cli.platform import settings_from_args
from orchestrator.runtime.errors import UsageError
from orchestrator.cli.local import data_from_args, profile_from_args, profile_named, task_spec_from_args, user_errors
from orchestrator.runtime.inputs import check_output_folder
from orchestrator.runtime.records import TrialRecord

SAFE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def command_pareto(args: argparse.Namespace) -> int:
    if args.plot:
        check_output_folder(Path(args.plot))  # before the store is opened
    run, store = settings_from_args(args, read_only=args.source == "mlflow")
    if args.source == "table":
        return pareto_from_table(args, store)
    from orchestrator.tracking.pareto import plot_front  # MLflow, once the tracking URI has passed its checks
    from orchestrator.tracking.runs import experiment_name, mlflow_client, update_front
    client = mlflow_client(run)
    name = experiment_name(task_spec_from_args(args).label)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        raise UsageError(f"no experiment {name} at {run.tracking_uri}; run a search first")
    from orchestrator.search.width import width_points
    rows = update_front(client, experiment.experiment_id)
    front = sorted((r for r in rows if r["pareto"]), key=lambda r: r["macs"])
    width = width_points(client, experiment.experiment_id)
    if args.plot:
        plot_front(args.plot, points=[(r["psnr"], r["macs"]) for r in rows], on_front=[r["pareto"] for r in rows],
                   budget_macs=None, title=f"{experiment.name}: PSNR vs MACs",
                   width=[(w["psnr"], w["macs"]) for w in width])
    print_front(experiment.name, front, args.json, width)
    return 0


def pareto_from_table(args, store) -> int:
    """The front from the Parquet trial table alone, and the width line recorded beside it: no MLflow."""
    from storage.stores import StorageError
    from storage.trial_table import read_trials

    from orchestrator.tracking.pareto import pareto_front, plot_front
    from orchestrator.runtime.records import experiment_name
    name = experiment_name(task_spec_from_args(args).label)
    try:
        rows = read_trials(store, name).to_pylist()
    except StorageError as err:
        raise UsageError(str(err)) from None
    from orchestrator.search.front import width_line
    width = width_line(store, name, [])  # the width points recorded beside the table (none before they were)
    flags = pareto_front([(r["psnr"], r["macs"]) for r in rows])
    front = sorted((dict(r, pareto=True) for r, f in zip(rows, flags) if f), key=lambda r: r["macs"])
    if args.plot:
        plot_front(args.plot, points=[(r["psnr"], r["macs"]) for r in rows], on_front=flags, budget_macs=None,
                   title=f"{name}: PSNR vs MACs", width=[(w["psnr"], w["macs"]) for w in width])
    print_front(name, front, args.json, width)
    return 0


def print_front(name: str, front: list[dict], as_json: bool, width: list[dict] | None = None) -> None:
    """The front, and the width line beside it (each budget's plain net, trained alike; width.py)."""
    if as_json:
        print(json.dumps({"experiment": name, "front": front, **({"width": width} if width is not None else {})},
                         default=str))
        return
    from search_space.budget import format_macs
    for r in front:
        print(f"{r['run_id'][:8]}  {format_macs(r['macs']):>9}MACs  {r['psnr']:.3f} dB  backbone {r['backbone']}  "
              f"positions {r['positions']}")
    for w in width or []:
        net = w.get("net", w.get("backbone", ""))
        print(f"width line: budget {format_macs(w['budget_macs'])}MACs, plain {net} at {format_macs(w['macs'])}MACs  "
              f"{w['psnr']:.3f} dB")


def command_status(args: argparse.Namespace) -> int:
    """The searches of this run directory: MLflow's status, or `INTERRUPTED` where the search state shows the
    driver gone while the run is still marked RUNNING, with the command that resumes it."""
    from search_space.budget import short_budget

    from orchestrator.search.state import SearchState
    run, _ = settings_from_args(args, read_only=True)
    from orchestrator.tracking.runs import experiment_name, mlflow_client  # MLflow, once the store is known to exist
    variant = experiment_name(task_spec_from_args(args).label) if args.task else None
    client = mlflow_client(run)
    searches = SearchState(run.run_dir).searches()
    states = {s["parent_run_id"]: s["status"] for s in searches}
    rows = []
    experiments = client.search_experiments(filter_string=f"name = '{variant}'" if variant else "name LIKE 'acla-%'")
    for experiment in experiments:
        for parent in client.search_runs([experiment.experiment_id], filter_string="tags.acla_kind = 'search'"):
            run_id, status = parent.info.run_id, parent.info.status
            if status == "RUNNING" and states.get(run_id) == "interrupted":
                status = "INTERRUPTED"
            rows.append({"experiment": experiment.name, "run_id": run_id, "status": status,
                         "task": parent.data.tags.get("task"), "budget_macs": parent.data.tags.get("budget_macs"),
                         "profile": parent.data.tags.get("profile"), "start_time": parent.info.start_time,
                         "resume": f"acla-orch resume {run_id}" if status in ("INTERRUPTED", "KILLED") else None})
    sweeps = sweep_rows(searches)
    ablations = ablation_status(client, run, [e.experiment_id for e in experiments], variant)
    if args.json:
        print(json.dumps({"run_dir": str(run.run_dir), "tracking_uri": run.tracking_uri, "searches": rows,
                          "sweeps": sweeps, "ablations": ablations}))
    else:
        print(f"run directory {run.run_dir}, tracking {run.tracking_uri}")
        for r in rows:
            budget = short_budget(float(r["budget_macs"])) if r["budget_macs"] else "?"
            print(f"{r['run_id'][:8]}  {r['status']:<11} {r['experiment']:<18} budget {budget} ({r['profile']})"
                  + (f"  -> {r['resume']}" if r["resume"] else ""))
        for sweep in sweeps:
            if sweep["not_begun"]:
                print(f"sweep {sweep['id']}: not begun: {', '.join(short_budget(b) for b in sweep['not_begun'])} "
                      f"-> acla-orch resume {sweep['parent_run_ids'][-1]} (the whole sweep)")
        for a in ablations:
            print(f"ablation {a['id']}  {a['task']}, {a['steps']} steps: {a['kept']} of {a['trainings']} trainings "
                  f"kept" + ("" if a["recorded"] else f", not finished (if it was cut off: {a['resume']})"))
    return 0


def ablation_status(client, run, experiment_ids: list[str], variant: str | None) -> list[dict]:
    """The ablations kept in the run's store (of one task variant, where given), as `ablation_rows` gives them,
    those recorded in MLflow under `experiment_ids` marked so; none, with one line on stderr, where the store
    cannot be read (the searches' status does not need it)."""
    from storage.stores import StorageError, open_store
    from orchestrator.analysis.ablation_plan import ablation_rows
    recorded = {r.data.tags.get("ablation_id") for r in client.search_runs(
        experiment_ids, filter_string="tags.acla_kind = 'ablation'")} if experiment_ids else set()
    try:
        return ablation_rows(open_store(run.storage), recorded, variant)
    except StorageError as err:
        print(f"acla-orch: status: ablations not listed: {err}", file=sys.stderr)
        return []


def sweep_rows(searches: list[dict]) -> list[dict]:
    """Each sweep of the run directory: its id, budgets, its budgets' parent runs so far, and those not begun
    (grouped as `resume` groups them, resume.sweep_members)."""
    from orchestrator.search.resume import sweep_members
    rows = {}
    for search in searches:
        sweep = search["request"].get("sweep")
        if sweep and sweep["id"] not in rows:
            members = sweep_members(searches, search)
            rows[sweep["id"]] = {"id": sweep["id"], "budgets": sweep["budgets"],
                                 "parent_run_ids": [m["parent_run_id"] for m in members.values()],
                                 "not_begun": [b for b in sweep["budgets"] if b not in members]}
    return list(rows.values())


def command_retrain(args: argparse.Namespace) -> int:
    """Retrain one finished trial's genotype on Ray Train and register it, as a search does for its winners."""
    data = data_from_args(args)  # --data and --profile checked before the store is opened
    if args.profile:
        profile_named(args.profile)
    run, store = settings_from_args(args, read_only=True)
    import mlflow  # MLflow and Ray, once the store is known to exist
    from workers.tasks import TaskSpec

    from orchestrator.runtime.ray_session import ray_session
    from orchestrator.tracking.runs import mlflow_client
    client = mlflow_client(run)
    try:
        trial = client.get_run(args.run_id)
    except Exception:
        raise UsageError(f"no MLflow run {args.run_id} at {run.tracking_uri}") from None
    tags = trial.data.tags
    if tags.get("acla_kind") != "trial" or trial.info.status != "FINISHED":
        raise UsageError(f"run {args.run_id} is not a finished search trial")
    trial_id = tags.get("trial_id", args.run_id[:8])
    if not SAFE_NAME.fullmatch(trial_id):  # it becomes Ray Train's run name, a folder: never a path from a tag
        raise UsageError(f"run {args.run_id} has a trial_id tag {trial_id[:80]!r} that is not a plain name; "
                         f"expected letters, digits, '_' or '-' (1-64 of them)")
    genotype_path = mlflow.artifacts.download_artifacts(run_id=args.run_id, artifact_path="genotype.json",
                                                        tracking_uri=run.tracking_uri)
    from orchestrator.search.trial import TrialSettings
    from orchestrator.retrain.winners import retrain_winners
    winner = TrialRecord.from_mlflow(trial, Path(genotype_path).read_text())
    profile = profile_from_args(args, default=tags.get("profile", "quick"))
    from orchestrator.search.job import check_retrain_workers
    check_retrain_workers(args.retrain_workers, profile)
    settings = TrialSettings(task=TaskSpec(**json.loads(tags["task_spec"])), budget_macs=float(tags["budget_macs"]),
                             profile=profile, data=data, attention=winner.genotype.attention,
                             seed=args.seed)
    with user_errors(), contextlib.redirect_stdout(sys.stderr), ray_session(run):
        retrained = retrain_winners(run=run, store=store, client=client, experiment_id=trial.info.experiment_id,
                                    parent_id=tags["mlflow.parentRunId"], request_settings=settings, winners=[winner],
                                    retrain_workers=args.retrain_workers, set_alias=args.set_alias)
    print(json.dumps(retrained[0]) if args.json else "\n".join(f"{k:>15}: {v}" for k, v in retrained[0].items()))
    return 0
