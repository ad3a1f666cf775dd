"""`acla-orch resume [PARENT_RUN_ID | --last]`: finish a search that was interrupted (killed, crashed, its machine
gone, its tracking server away too long), from the run directory's search state (state.py).

Resuming runs the search's own job again, as it was stored (records.SearchJob.to_stored; no command line is
replayed), with the same parent MLflow run and the same Optuna study:
- trials that finished are kept as they were, never run again; those whose MLflow record never reached the
  tracking server (it was away, and the search stopped after --tracking-patience) have it sent first;
- trials that were running are run again with their config (queued in Optuna), and Optuna's stale RUNNING trials
  are failed; new trials come from the reproducible sampler (sampler.py), so with one trial at a time the
  resumed search proposes what an uninterrupted one would have;
- MLflow runs left RUNNING under the parent are closed as KILLED, and the parent runs again;
- the winners not yet retrained are retrained (each finished retrain is recorded as it ends), and every
  artifact set is written again, so a set that lost its manifest in the crash is completed.

A sweep resumes as one job: any of its budgets' searches names it, and every budget of it that has not finished
runs, in the sweep's order: those cut off continue, those never begun are searched anew.
"""
from __future__ import annotations

from orchestrator.runtime.errors import UsageError


def pick_search(state, parent_id: str | None) -> dict:
    searches = state.searches()
    if parent_id:
        found = [s for s in searches if s["parent_run_id"] == parent_id]
        if not found:
            raise UsageError(f"no search {parent_id} in {state.path}; `acla-orch status` lists them")
        search = found[0]
    else:
        open_ones = [s for s in searches if s["status"] in ("interrupted", "killed", "failed")
                     or unfinished_sweep(searches, s)]
        if not open_ones:
            raise UsageError(f"no interrupted search in {state.path}; nothing to resume")
        search = open_ones[-1]
    if search["status"] == "running":
        raise UsageError(f"search {search['parent_run_id']} is still running (pid {search['pid']} on "
                         f"{search['host']}); stop it first")
    if search["status"] == "finished" and not unfinished_sweep(searches, search):
        raise UsageError(f"search {search['parent_run_id']} has finished; nothing to resume")
    return search


def sweep_members(searches: list[dict], search: dict) -> dict:
    """{budget: search} of the sweep that `search` belongs to ({} for a single search)."""
    sweep = search["request"].get("sweep")
    if not sweep:
        return {}
    return {s["request"]["budget"]: s for s in searches if (s["request"].get("sweep") or {}).get("id") == sweep["id"]}


def unfinished_sweep(searches: list[dict], search: dict) -> bool:
    """A finished budget of a sweep whose driver is gone before it began every budget (cut off between two)."""
    from orchestrator.search.state import driver_alive
    members = sweep_members(searches, search)
    return (bool(members) and not driver_alive(search["host"], search["pid"])
            and any(budget not in members for budget in search["request"]["sweep"]["budgets"]))


def resume_targets(searches: list[dict], search: dict) -> tuple[tuple[float, ...], dict]:
    """The budgets a resume runs and the parent run each continues ({budget: parent}): the search's own; for a
    sweep, every budget of it not finished, in the sweep's order (one never begun has no parent: searched anew)."""
    members = sweep_members(searches, search)
    if not members:
        return (search["request"]["budget"],), {search["request"]["budget"]: search["parent_run_id"]}
    budgets, parents = [], {}
    for budget in search["request"]["sweep"]["budgets"]:
        member = members.get(budget)
        if member is not None and member["status"] == "running":
            raise UsageError(f"search {member['parent_run_id']} of this sweep is still running (pid {member['pid']} "
                             f"on {member['host']}); stop it first")
        if member is None or member["status"] != "finished":
            budgets.append(budget)
            if member is not None:
                parents[budget] = member["parent_run_id"]
    return tuple(budgets), parents


def check_precision(requested: str | None, stored: str, parent_id: str) -> None:
    """A search resumes in the precision it started with: --precision may name it (or auto, when auto picks
    it here), nothing else."""
    if requested is None or requested == stored:
        return
    if requested == "auto":
        from search_space.precision import local_device_type, resolve_precision
        if resolve_precision("auto", local_device_type()) == stored:
            return
    raise UsageError(f"search {parent_id} started in {stored} and resumes in it; expected --precision {stored} "
                     f"or no --precision")

