"""`acla-orch resume [PARENT_RUN_ID | --last]`: the flags of a stored search taken up again (orchestrator/search/resume.py
says what resuming does)."""
from __future__ import annotations

import argparse
import dataclasses

from orchestrator.runtime.errors import UsageError
from orchestrator.search.resume import check_precision, pick_search, resume_targets


def command_resume(args: argparse.Namespace) -> int:
    from orchestrator.runtime.records import SearchJob
    from orchestrator.search.job import run_search
    from orchestrator.cli.platform import settings_from_args
    from orchestrator.runtime.settings import PLATFORM_KEYS, redacted_platform, resolve_settings
    from orchestrator.search.state import SearchState
    if bool(args.parent_run_id) == bool(args.last):
        raise UsageError("give the search's parent run id, or --last for the most recent interrupted search")
    run = resolve_settings(tracking_uri=None, artifact_root=None, address=None)  # the run directory alone, first:
    state = SearchState(run.run_dir)  # where the search was tracked is in its stored request, checked below
    search = pick_search(state, args.parent_run_id)
    budgets, parents = resume_targets(state.searches(), search)
    try:
        job = SearchJob.from_stored(search["request"], json_output=args.json, resume_parents=parents, budgets=budgets)
    except ValueError as err:
        raise UsageError(f"search {search['parent_run_id']} cannot be resumed by this release: {err}") from None
    check_precision(args.precision, job.profile.precision, search["parent_run_id"])
    platform = dict(job.request)
    for key in PLATFORM_KEYS:  # where things live: as the search had them, unless `resume` is given others
        if getattr(args, key) not in (None, False):
            platform[key] = getattr(args, key)
    if "***" in (platform.get("tracking_uri") or ""):
        raise UsageError("the search's tracking URI holds a password, which was not stored; pass --tracking-uri")
    run, store = settings_from_args(argparse.Namespace(**{key: platform.get(key) for key in PLATFORM_KEYS},
                                                       tracking_patience=args.tracking_patience))
    return run_search(dataclasses.replace(job, request=redacted_platform(platform)), run, store)
