"""One search, top to bottom: the budget's trials on Ray Tune (continued, when resumed), the front, the winners
retrained and registered, the summary. `command_search` (commands.py) checks every input first and calls
`run_one_budget` once per budget inside one Ray session.

The parent MLflow run ends FINISHED only when everything it announces exists; an error marks it FAILED and
Ctrl-C or SIGTERM marks it KILLED, so no half-made run looks finished. The run directory's search state
(state.py) records every step as it happens, for `status` and `resume`.
"""
from __future__ import annotations

import dataclasses
import json
import shlex
import sys

from .errors import UsageError


def search_profile(args, profile):
    """The profile with the --search-steps / --search-warmup overrides; a warm-up as long as the search is refused."""
    steps = args.search_steps or profile.search_steps
    warmup = profile.search_warmup if args.search_warmup is None else args.search_warmup
    if warmup >= steps:
        raise UsageError(f"--search-warmup {warmup} leaves no architecture step in a {steps}-step search; "
                         f"expected fewer warm-up steps than --search-steps")
    return dataclasses.replace(profile, search_steps=steps, search_warmup=warmup)


def trial_settings(args, task, profile, data, budget, run=None):
    """What each trial needs; with the run, its checkpoints go under `<run dir>/trial-checkpoints`."""
    from .trial import TrialSettings
    return TrialSettings(task=task, budget_macs=budget, profile=profile, data=data, attention=args.attention,
                         seed=args.seed,
                         checkpoint_root=None if run is None else str(run.run_dir / "trial-checkpoints"))


def progress_reporter(enabled: bool):
    """A rich progress bar on stderr while trials run (quiet when stderr is not a terminal)."""
    from rich.progress import Progress
    progress = Progress(disable=not (enabled and sys.stderr.isatty()), transient=True)
    progress.start()
    task_id = progress.add_task("trials", total=None)

    def report(done: int, total: int) -> None:
        progress.update(task_id, completed=done, total=total, description=f"trials {done}/{total}")
    return progress, report


def run_one_budget(*, args, run, store, client, task, profile, data, budget) -> dict:
    """One budget's search, recorded as it goes in the run directory's search state; with `args.resume_parent`
    it continues that search: its finished trials kept, its interrupted ones run again, its retrains done."""
    from .driver import SearchRequest, budget_label, git_commit, run_search_on_ray
    from .resume import close_stale_runs, resume_plan, stored_request
    from .state import SearchState
    from .winners import pick_winners, record_trials
    from .tracking import ensure_experiment, experiment_name, log_front, start_parent, update_front

    settings = trial_settings(args, task, profile, data, budget, run)
    request = SearchRequest(settings=settings, run=run, trials=args.trials or profile.trials,
                            concurrency=args.concurrency or profile.concurrency, command_line=shlex.join(sys.argv))
    name = experiment_name(task.name)
    experiment_id = ensure_experiment(client, name, run.artifact_root, run.tracking_uri)
    state = SearchState(run.run_dir)
    resume_parent = getattr(args, "resume_parent", None)
    if resume_parent:
        parent_id, plan = resume_parent, resume_plan(state, resume_parent)
        close_stale_runs(client, experiment_id, parent_id)
        client.update_run(parent_id, status="RUNNING")
    else:
        tags = {"budget_macs": str(int(budget)), "task": task.label, "profile": profile.name,
                "git_commit": git_commit(), "search_steps": str(profile.search_steps),
                "search_warmup": str(profile.search_warmup), "command_line": request.command_line[:4000]}
        parent_id, plan = start_parent(client, experiment_id, run_name=f"search-{task.label}-{budget_label(budget)}",
                                       tags=tags), None
    state.begin(parent_id, experiment_id, stored_request(args, budget))
    progress, reporter = progress_reporter(not args.json)
    try:
        recorded = run_search_on_ray(request, client, experiment_id, parent_id, reporter, state, plan)
        progress.stop()
        if not recorded:
            raise UsageError("no trial finished; see the Ray logs under the run directory")
        rows = update_front(client, experiment_id)
        record_trials(store, name, parent_id, recorded, rows)
        title = f"{name}: PSNR vs MACs"
        log_front(client, parent_id, rows, budget_macs=budget, title=title)
        front_ids = {r["run_id"] for r in rows if r["pareto"]}
        winners = pick_winners(recorded, front_ids, args.retrain_top)
        retrained = [] if args.no_retrain else retrain_each(run, store, client, experiment_id, parent_id, settings,
                                                             winners, args.retrain_workers, state)
        if retrained:
            log_front(client, parent_id, rows, budget_macs=budget, title=title + " (stars: retrained)",
                      retrained=[(r["psnr"], r["macs"]) for r in retrained], suffix="_retrained")
        client.set_terminated(parent_id, "FINISHED")
        state.end(parent_id, "finished")
    except KeyboardInterrupt:
        progress.stop()
        client.set_terminated(parent_id, "KILLED")
        state.end(parent_id, "killed")
        raise
    except BaseException:
        progress.stop()
        client.set_terminated(parent_id, "FAILED")
        state.end(parent_id, "failed")
        raise
    return summarise(name, parent_id, budget, task, profile, recorded, rows, retrained)


def retrain_each(run, store, client, experiment_id, parent_id, settings, winners, retrain_workers, state) -> list[dict]:
    """The winners retrained one by one, each outcome saved as it ends; a resumed search skips those it has.
    The budget's alias goes to the best winner."""
    from .winners import retrain_winners
    done = state.retrains(parent_id)
    outcomes = []
    for rank, winner in enumerate(winners):
        if winner["run_id"] not in done:
            outcome, = retrain_winners(run=run, store=store, client=client, experiment_id=experiment_id,
                                       parent_id=parent_id, request_settings=settings, winners=[winner],
                                       retrain_workers=retrain_workers, set_alias=rank == 0)
            state.retrain_finished(parent_id, winner["run_id"], outcome)
            done[winner["run_id"]] = outcome
        outcomes.append(done[winner["run_id"]])
    return outcomes


def summarise(name, parent_id, budget, task, profile, recorded, rows, retrained) -> dict:
    front = {r["run_id"]: r["pareto"] for r in rows}
    by_trial = {r["trial_run_id"]: r for r in retrained}
    trials = []
    for item in sorted(recorded, key=lambda r: -r["result"]["psnr"]):
        genotype = json.loads(item["result"]["genotype"])
        trials.append({"trial": item["trial"], "run_id": item["run_id"],
                       "backbone": {"channels": genotype["channels"], "blocks": genotype["blocks"], "stages": genotype["stages"]},
                       "positions": genotype["positions"], "keys": genotype["keys"], "macs": int(item["result"]["macs"]),
                       "proxy_macs": int(item["result"].get("proxy_macs", item["result"]["macs"])),
                       "position_scores": json.loads(item["result"].get("position_scores", "[]")),
                       "params": int(item["result"]["params"]), "psnr": round(item["result"]["psnr"], 4),
                       "ssim": round(item["result"]["ssim"], 4), "pareto": bool(front.get(item["run_id"], False)),
                       "attention_backend": item["result"].get("attention_backend"),
                       "retrained_psnr": by_trial.get(item["run_id"], {}).get("psnr"),
                       "artifact_uri": item["artifact_uri"]})
    return {"experiment": name, "parent_run_id": parent_id, "task": task.label, "budget_macs": int(budget),
            "profile": profile.name, "trials": trials, "retrained": retrained}


def print_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    from search_space.budget import format_macs
    table = Table(title=f"{summary['experiment']} search {summary['parent_run_id'][:8]}: "
                        f"{summary['task']} within {format_macs(summary['budget_macs'])}MACs")
    for column in ("trial", "backbone", "positions", "keys", "MACs (proxy)", "PSNR (proxy)", "front", "retrained PSNR",
                   "artifacts"):
        table.add_column(column)
    for t in summary["trials"]:
        b = t["backbone"]
        table.add_row(t["trial"], f"{b['channels']}ch x {b['blocks']}", str(t["positions"]), str(t["keys"]),
                      f"{format_macs(t['macs'])} ({format_macs(t['proxy_macs'])})", f"{t['psnr']:.2f}",
                      "*" if t["pareto"] else "",
                      "" if t["retrained_psnr"] is None else f"{t['retrained_psnr']:.2f}", t["artifact_uri"])
    Console(width=None if sys.stdout.isatty() else 200).print(table)  # a pipe gets whole URIs, not 80 columns


