"""`acla-orch resume [PARENT_RUN_ID | --last]`: finish a search that was interrupted (killed, crashed, its machine
gone), from the run directory's search state (state.py).

Resuming replays the search's own request with the same parent MLflow run and the same Optuna study:
- trials that finished are kept as they were, never run again;
- trials that were running are run again with their config (queued in Optuna), and Optuna's stale RUNNING trials
  are failed; new trials come from the reproducible sampler (sampler.py), so with one trial at a time the
  resumed search proposes what an uninterrupted one would have;
- MLflow runs left RUNNING under the parent are closed as KILLED, and the parent runs again;
- the winners not yet retrained are retrained (each finished retrain is recorded as it ends), and every
  artifact set is written again, so a set that lost its manifest in the crash is completed.
"""
from __future__ import annotations

import argparse
import json

from .errors import UsageError

# Flags of the request that name where things live or how the output looks: `resume` takes its own.
PLATFORM_KEYS = ("tracking_uri", "artifact_root", "address", "s3_endpoint", "create_bucket", "json")


def stored_request(args: argparse.Namespace) -> dict:
    """The search's flags as `resume` replays them (the budget is added per search; no handler; passwords out)."""
    from .settings import redact
    request = {k: v for k, v in vars(args).items() if k not in ("handler", "resume_parent", "budgets", "budget")}
    request.update(verb="search")
    if request.get("tracking_uri"):
        request["tracking_uri"] = redact(request["tracking_uri"])
    return request


def resume_plan(state, parent_id: str):
    """What the search already has, from its state: finished trials as recorded, and the configs still owed:
    those of trials cut off (running when the driver died, or interrupted before and never run to an end since),
    each once."""
    from .driver import ResumePlan
    from .records import TrialRecord
    trials = state.trials(parent_id)
    ended = {json.dumps(t["config"], sort_keys=True) for t in trials if t["state"] in ("finished", "failed")}
    recorded, owed = [], {}
    for trial in trials:
        if trial["state"] == "finished":
            recorded.append(TrialRecord(trial=trial["trial_id"], run_id=trial["mlflow_run_id"], params=trial["config"],
                                        result=trial["result"], artifact_uri=trial["artifact_uri"]))
        elif trial["state"] in ("running", "interrupted"):
            if trial["state"] == "running":
                state.trial_interrupted(parent_id, trial["trial_id"])
            key = json.dumps(trial["config"], sort_keys=True)
            if key not in ended:
                owed.setdefault(key, trial["config"])
    done = sum(1 for t in trials if t["state"] in ("finished", "failed"))
    return ResumePlan(recorded=recorded, done=done, interrupted=list(owed.values()))


def pick_search(state, parent_id: str | None) -> dict:
    searches = state.searches()
    if parent_id:
        found = [s for s in searches if s["parent_run_id"] == parent_id]
        if not found:
            raise UsageError(f"no search {parent_id} in {state.path}; `acla-orch status` lists them")
        search = found[0]
    else:
        open_ones = [s for s in searches if s["status"] in ("interrupted", "killed", "failed")]
        if not open_ones:
            raise UsageError(f"no interrupted search in {state.path}; nothing to resume")
        search = open_ones[-1]
    if search["status"] == "running":
        raise UsageError(f"search {search['parent_run_id']} is still running (pid {search['pid']} on "
                         f"{search['host']}); stop it first")
    if search["status"] == "finished":
        raise UsageError(f"search {search['parent_run_id']} has finished; nothing to resume")
    return search


def command_resume(args: argparse.Namespace) -> int:
    from .cli import command_search, settings_from_args
    from .state import SearchState
    if bool(args.parent_run_id) == bool(args.last):
        raise UsageError("give the search's parent run id, or --last for the most recent interrupted search")
    run, _ = settings_from_args(args, read_only=True)
    search = pick_search(SearchState(run.run_dir), args.parent_run_id)
    request = dict(search["request"])
    for key in PLATFORM_KEYS:  # where things live: as the search had them, unless `resume` is given others
        if getattr(args, key) not in (None, False):
            request[key] = getattr(args, key)
    request["json"] = args.json
    if "***" in (request.get("tracking_uri") or ""):
        raise UsageError("the search's tracking URI holds a password, which was not stored; pass --tracking-uri")
    replay = argparse.Namespace(**request, budgets=None, resume_parent=search["parent_run_id"])
    return command_search(replay)
