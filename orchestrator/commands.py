"""The orchestrator's verbs: search, sweep, pareto, status, retrain, resume. Each checks its inputs and targets
first; one search's recipe is search_job.py, the winners' retraining and registration winners.py, resuming
resume.py, the ablation ablate.py.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys

from search_space.registry import TASK_NAMES

from .argtypes import non_negative_int, positive_int, run_id_arg, seed_arg
from .errors import UsageError
from .search_job import print_summary, run_one_budget, search_profile, trial_settings

SAFE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
from .local_commands import check_training_data, data_from_args, profile_from_args, task_spec_from_args, user_errors
from .settings import (check_ray_address, check_s3_endpoint, check_tracking_uri, create_sqlite_folder,
                       open_artifact_store, resolve_settings)

def settings_from_args(args, *, read_only: bool = False):
    """Every target checked, cheapest first, before anything is created: a bad one is one line and leaves no
    file behind. `read_only` verbs (status, pareto, retrain) need a tracking store that a search has made."""
    run = resolve_settings(tracking_uri=args.tracking_uri, artifact_root=args.artifact_root, address=args.address,
                           s3_endpoint=args.s3_endpoint, create_bucket=args.create_bucket)
    check_tracking_uri(run.tracking_uri, must_exist=read_only)
    if run.storage.is_s3:
        check_s3_endpoint(run.storage.resolved_endpoint())
    check_ray_address(run.ray_address)
    run_store = open_artifact_store(run)
    return run, run_store


def mlflow_client(run):
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    create_sqlite_folder(run.tracking_uri)
    os.environ.update(run.storage.mlflow_environment())  # MLflow's S3 artifacts use the same endpoint
    import mlflow
    from mlflow.tracking import MlflowClient
    mlflow.set_tracking_uri(run.tracking_uri)
    return MlflowClient(run.tracking_uri)


@contextlib.contextmanager
def storage_faults(run):
    """An S3 store that stops answering mid-run surfaces from boto3, pyarrow, MLflow or Ray Train in many
    shapes; when the endpoint is down afterwards, say that in one line (nothing incomplete has a manifest)."""
    try:
        yield
    except KeyboardInterrupt:
        raise
    except Exception:  # UsageError too: Ray Tune swallows a failing callback, leaving "no trial finished"
        if not run.storage.is_s3:
            raise
        from storage.stores import StorageError, check_bucket
        try:
            check_bucket(run.storage)
        except StorageError as err:
            raise UsageError(f"the artifact store failed during the run: {err}; sets without a manifest are "
                             f"incomplete and are completed by uploading again") from None
        raise


def command_search(args: argparse.Namespace) -> int:
    from .driver import ray_session
    task = task_spec_from_args(args)
    profile, data = search_profile(args, profile_from_args(args)), data_from_args(args)
    check_training_data(data, task, profile)
    budgets = args.budgets if getattr(args, "budgets", None) else [args.budget]
    from .driver import check_feasible
    from .trial import unused_budget_warning
    with user_errors():
        for budget in budgets:  # the one budget check, before any work starts
            check_feasible(trial_settings(args, task, profile, data, budget))
            warning = unused_budget_warning(task, profile, budget)
            if warning:
                print(warning, file=sys.stderr)
    run, store = settings_from_args(args)
    client = mlflow_client(run)
    summaries = []
    # Ray Tune prints its own banners on stdout; stdout is kept for our summary (and clean for --json).
    with user_errors(), storage_faults(run), contextlib.redirect_stdout(sys.stderr), ray_session(run):
        for budget in budgets:
            summaries.append(run_one_budget(args=args, run=run, store=store, client=client, task=task,
                                            profile=profile, data=data, budget=budget))
    if args.json:
        print(json.dumps(summaries[0] if len(summaries) == 1 else {"searches": summaries}))
    else:
        for summary in summaries:
            print_summary(summary)
    return 0


def command_pareto(args: argparse.Namespace) -> int:
    from .tracking import experiment_name, update_front
    from .pareto import plot_front
    run, store = settings_from_args(args, read_only=args.source == "mlflow")
    if args.source == "table":
        return pareto_from_table(args, store)
    client = mlflow_client(run)
    experiment = client.get_experiment_by_name(experiment_name(args.task))
    if experiment is None:
        raise UsageError(f"no experiment {experiment_name(args.task)} at {run.tracking_uri}; run a search first")
    rows = update_front(client, experiment.experiment_id)
    front = sorted((r for r in rows if r["pareto"]), key=lambda r: r["macs"])
    if args.plot:
        plot_front(args.plot, points=[(r["psnr"], r["macs"]) for r in rows], on_front=[r["pareto"] for r in rows],
                   budget_macs=None, title=f"{experiment.name}: PSNR vs MACs")
    print_front(experiment.name, front, args.json)
    return 0


def pareto_from_table(args, store) -> int:
    """The front from the Parquet trial table alone: no MLflow."""
    from storage.stores import StorageError
    from storage.trial_table import read_trials

    from .pareto import pareto_front, plot_front
    from .tracking import experiment_name
    name = experiment_name(args.task)
    try:
        rows = read_trials(store, name).to_pylist()
    except StorageError as err:
        raise UsageError(str(err)) from None
    flags = pareto_front([(r["psnr"], r["macs"]) for r in rows])
    front = sorted((dict(r, pareto=True) for r, f in zip(rows, flags) if f), key=lambda r: r["macs"])
    if args.plot:
        plot_front(args.plot, points=[(r["psnr"], r["macs"]) for r in rows], on_front=flags, budget_macs=None,
                   title=f"{name}: PSNR vs MACs")
    print_front(name, front, args.json)
    return 0


def print_front(name: str, front: list[dict], as_json: bool) -> None:
    if as_json:
        print(json.dumps({"experiment": name, "front": front}, default=str))
        return
    from search_space.budget import format_macs
    for r in front:
        print(f"{r['run_id'][:8]}  {format_macs(r['macs']):>9}MACs  {r['psnr']:.3f} dB  backbone {r['backbone']}  "
              f"positions {r['positions']}")


def command_status(args: argparse.Namespace) -> int:
    """The searches of this run directory: MLflow's status, or `INTERRUPTED` where the search state shows the
    driver gone while the run is still marked RUNNING, with the command that resumes it."""
    from .state import SearchState
    run, _ = settings_from_args(args, read_only=True)
    client = mlflow_client(run)
    states = {s["parent_run_id"]: s["status"] for s in SearchState(run.run_dir).searches()}
    rows = []
    for experiment in client.search_experiments(filter_string="name LIKE 'acla-%'"):
        for parent in client.search_runs([experiment.experiment_id], filter_string="tags.acla_kind = 'search'"):
            run_id, status = parent.info.run_id, parent.info.status
            if status == "RUNNING" and states.get(run_id) == "interrupted":
                status = "INTERRUPTED"
            rows.append({"experiment": experiment.name, "run_id": run_id, "status": status,
                         "task": parent.data.tags.get("task"), "budget_macs": parent.data.tags.get("budget_macs"),
                         "profile": parent.data.tags.get("profile"), "start_time": parent.info.start_time,
                         "resume": f"acla-orch resume {run_id}" if status in ("INTERRUPTED", "KILLED") else None})
    if args.json:
        print(json.dumps({"run_dir": str(run.run_dir), "tracking_uri": run.tracking_uri, "searches": rows}))
    else:
        print(f"run directory {run.run_dir}, tracking {run.tracking_uri}")
        for r in rows:
            print(f"{r['run_id'][:8]}  {r['status']:<11} {r['experiment']:<14} {r['task']:<16} budget "
                  f"{r['budget_macs']} ({r['profile']})" + (f"  -> {r['resume']}" if r["resume"] else ""))
    return 0


def command_retrain(args: argparse.Namespace) -> int:
    """Retrain one finished trial's genotype on Ray Train and register it, as a search does for its winners."""
    import mlflow
    from workers.tasks import TaskSpec

    from .driver import ray_session
    run, store = settings_from_args(args, read_only=True)
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
    task = TaskSpec(**json.loads(tags["task_spec"]))
    args.profile = args.profile or tags.get("profile", "quick")
    profile, data = profile_from_args(args), data_from_args(args)
    settings = trial_settings(args, task, profile, data, float(tags["budget_macs"]))
    winner = {"trial": trial_id, "run_id": args.run_id,
              "result": {"genotype": open(genotype_path).read(), "macs": trial.data.metrics["macs"]}}
    from .winners import retrain_winners
    with user_errors(), contextlib.redirect_stdout(sys.stderr), ray_session(run):
        retrained = retrain_winners(run=run, store=store, client=client, experiment_id=trial.info.experiment_id,
                                    parent_id=tags["mlflow.parentRunId"], request_settings=settings, winners=[winner],
                                    retrain_workers=args.retrain_workers, set_alias=args.set_alias)
    print(json.dumps(retrained[0]) if args.json else "\n".join(f"{k:>15}: {v}" for k, v in retrained[0].items()))
    return 0


def add_platform_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite under the run dir)")
    parser.add_argument("--artifact-root", help="where checkpoints and models land (default: <run dir>/artifacts)")
    parser.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--s3-endpoint", help="S3-compatible endpoint URL (default: $AWS_ENDPOINT_URL, else AWS)")
    parser.add_argument("--create-bucket", action="store_true", help="create the artifact bucket if it is missing")
    parser.add_argument("--json", action="store_true", help="machine-readable output on stdout")


def register_orchestrator_commands(verbs, *, add_task_args, budget_arg, add_data_args) -> None:
    def add_search_args(parser):
        add_task_args(parser)
        add_data_args(parser)
        add_platform_args(parser)
        parser.add_argument("--attention", default="acla", choices=("acla", "cla", "nonlocal"))
        parser.add_argument("--trials", type=positive_int, help="outer-search trials (default: the profile's)")
        parser.add_argument("--concurrency", type=positive_int, help="trials at once (default: the profile's)")
        parser.add_argument("--search-steps", type=positive_int,
                            help="differentiable-search steps per trial (default: the profile's)")
        parser.add_argument("--search-warmup", type=non_negative_int,
                            help="first search steps that train the weights only (default: the profile's)")
        parser.add_argument("--retrain-top", type=positive_int, default=1,
                            help="retrain the best trial (1, default) or the top k Pareto-front members")
        parser.add_argument("--retrain-workers", type=positive_int, default=2, help="Ray Train DDP workers")
        parser.add_argument("--no-retrain", action="store_true", help="stop after the search and the front")

    search = verbs.add_parser("search", help="budgeted architecture search on Ray Tune + Optuna, tracked in MLflow",
                              description="Search where to insert ACLA under a MACs budget, record every trial and "
                                          "the Pareto front in MLflow, retrain the winners on Ray Train. "
                                          "1 FLOP = 1 multiply-accumulate here.")
    search.add_argument("--budget", required=True, type=budget_arg, help="e.g. 50GFLOPs, 25GMACs, 50G, 5e10 or 800M")
    add_search_args(search)
    search.set_defaults(handler=command_search)

    sweep = verbs.add_parser("sweep", help="several budgets in one Ray session, filling one front")
    sweep.add_argument("--budgets", required=True, type=lambda text: [budget_arg(b) for b in text.split(",")],
                       help="comma-separated budgets, e.g. 20G,35G,50G,80G")
    add_search_args(sweep)
    sweep.set_defaults(handler=command_search)

    pareto = verbs.add_parser("pareto", help="the current Pareto front of a task, from MLflow")
    pareto.add_argument("--task", required=True, choices=TASK_NAMES)
    pareto.add_argument("--plot", help="write the front as a PNG")
    pareto.add_argument("--source", choices=("table", "mlflow"), default="table",
                        help="read the Parquet trial table in the artifact store (default) or query MLflow")
    add_platform_args(pareto)
    pareto.set_defaults(handler=command_pareto)

    retrain = verbs.add_parser("retrain", help="retrain one trial's genotype on Ray Train and register it")
    retrain.add_argument("--run-id", required=True, type=run_id_arg, help="the MLflow run id of a finished trial")
    retrain.add_argument("--profile", help="profile whose retrain schedule to use (default: the trial's)")
    retrain.add_argument("--data", help="training images (default: the embedded photos)")
    retrain.add_argument("--seed", type=seed_arg, default=0)
    retrain.add_argument("--attention", default="acla", help=argparse.SUPPRESS)
    retrain.add_argument("--retrain-workers", type=positive_int, default=2, help="Ray Train DDP workers")
    retrain.add_argument("--set-alias", action="store_true",
                         help="point the budget's alias (models:/acla-TASK@budget-...) at the retrained model")
    add_platform_args(retrain)
    retrain.set_defaults(handler=command_retrain)

    from .resume import register_resume
    register_resume(verbs, add_platform_args)

    status = verbs.add_parser("status", help="the searches of this run directory and their state")
    add_platform_args(status)
    status.set_defaults(handler=command_status)
