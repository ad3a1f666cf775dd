"""A search or a sweep, top to bottom: every budget's trials in one Ray Tune run (continued, when resumed), then
for each budget the front, the winners retrained and registered, the summary. `command_search` (orchestrator/cli/main.py)
parses the flags into a `SearchJob`, checks every input and budget once, and calls `run_search`, which runs every
budget inside one Ray session (`run_budgets`).

The parent MLflow run ends FINISHED only when everything it announces exists; an error marks it FAILED and
Ctrl-C or SIGTERM marks it KILLED, so no half-made run looks finished. A tracking server that goes away is
waited for while the trials go on, up to --tracking-patience (tracking/outage.py); past it the search stops,
interrupted, for `resume`. The run directory's search state
(state.py) records every step as it happens, for `status` and `resume`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import textwrap
import time

from orchestrator.runtime.errors import UsageError, raise_if_cancelled
from orchestrator.runtime.records import SearchJob, TrialRecord


def trial_settings(job: SearchJob, budget: float, run=None):
    """What each trial needs; with the run, its checkpoints go under `<run dir>/trial-checkpoints`."""
    from orchestrator.search.trial import TrialSettings
    return TrialSettings(task=job.task, budget_macs=budget, profile=job.profile, data=job.data, attention=job.attention,
                         seed=job.seed,
                         checkpoint_root=None if run is None else str(run.run_dir / "trial-checkpoints"))


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


def run_search(job: SearchJob, run, store) -> int:
    """The recipe: check once (training data, and every budget against the profile's backbones) -> one Ray
    session -> every budget's search (run_budgets) -> the summary (a table, or JSON on stdout)."""
    from workers.backbones import check_feasible, unused_budget_warning

    from orchestrator.runtime.cluster import check_artifact_root, node_shapes, retrain_resources, trial_resources
    from orchestrator.runtime.inputs import check_training_data, user_errors
    check_training_data(job.data, job.task, job.profile)
    if job.retrain:
        check_retrain_workers(job.retrain_workers, job.profile)
    with user_errors():
        backbones = {budget: check_feasible(job.task, job.profile, budget) for budget in job.budgets}
    shared = {}  # the sweep's supernet, once it is trained or found: its bytes, its store URI, its resumed step
    if job.shared:
        from orchestrator.search.shared_supernet import stored_supernet
        from orchestrator.search.state import SearchState
        # a resumed sweep whose trials began was derived from a stored supernet: it must be there, intact
        trained_before = any(SearchState(run.run_dir).trials(parent) for parent in job.resume_parents.values())
        with user_errors():
            shared.update(stored_supernet(job, store, trained_before=trained_before))
    for budget in job.budgets:
        warning = unused_budget_warning(job.task, job.profile, budget)
        if warning:
            print(warning, file=sys.stderr)
    from orchestrator.runtime.ray_session import ray_session  # Ray, MLflow and torch are imported once the inputs have passed
    from orchestrator.tracking import outage
    from orchestrator.tracking.runs import mlflow_client
    # An MLflow server's outage is waited for, the trials going on (tracking/outage.py). Ray Tune prints its own
    # banners on stdout; stdout is kept for our summary (and clean for --json).
    with outage.held(run.tracking_uri, run.tracking_patience), user_errors(), storage_faults(run), \
            contextlib.redirect_stdout(sys.stderr), ray_session(run) as ray:
        shapes = node_shapes(ray)  # what the cluster offers, checked before any trial starts or run is made
        check_artifact_root(shapes, run.storage)
        resources = trial_resources(shapes, job.concurrency)
        if job.retrain:
            retrain_resources(shapes, job.retrain_workers)
        # the width nets train after the trials: one alone takes a whole node's CPUs; several share the cluster
        # as trials do (decided by the job, not by what a resume has left, so a resumed net trains alike)
        alone = len(job.sweep.budgets if job.sweep else job.budgets) == 1 and job.width_seeds < 2
        width_resources = trial_resources(shapes, 1) if alone else resources
        summaries = run_budgets(job, backbones, resources, run=run, store=store, client=mlflow_client(run),
                                width_resources=width_resources, shared=shared)
    if job.json:  # a sweep's budgets as a list, however many this job ran of them
        print(json.dumps({"searches": summaries} if job.sweep or len(summaries) > 1 else summaries[0]))
    else:
        for summary in summaries:
            print_summary(summary)
    return 0


def progress_reporter(enabled: bool):
    """A rich progress bar on stderr while trials run (quiet when stderr is not a terminal)."""
    from rich.progress import Progress
    progress = Progress(disable=not (enabled and sys.stderr.isatty()), transient=True)
    progress.start()
    task_id = progress.add_task("trials", total=None)

    def report(done: int, total: int) -> None:
        progress.update(task_id, completed=done, total=total, description=f"trials {done}/{total}")
    return progress, report


def check_retrain_workers(workers: int, profile) -> None:
    """The Ray Train workers share one batch of the profile's patches per step: no more workers than patches."""
    if workers > profile.batch_size:
        raise UsageError(f"--retrain-workers {workers} exceeds the {profile.name} profile's batch of "
                         f"{profile.batch_size} patches, which the workers share; expected at most {profile.batch_size}")


def open_search(job: SearchJob, budget: float, client, experiment_id: str, state, store) -> tuple[str, object]:
    """This budget's parent MLflow run, begun in the search state: a new one, or (with a parent for this budget in
    `job.resume_parents`) that search reopened, with what it already has (state.resume_plan; None when new): the
    records that waited for the tracking server sent first, then the runs it cut off closed as KILLED."""
    from orchestrator.search.driver import git_commit, send_what_waited
    from orchestrator.search.state import resume_plan
    from orchestrator.tracking.runs import close_stale_runs, reopen_parent, start_parent
    from search_space.budget import short_budget
    task, profile = job.task, job.profile
    if job.resume_parent(budget):
        parent_id = job.resume_parent(budget)
        sent, reports = send_what_waited(client, store, state, experiment_id, parent_id, trial_settings(job, budget))
        if sent or reports:
            print(f"acla-orch: resume: sent the MLflow records of {sent} trial(s) that finished while the tracking "
                  f"server was away, and {reports} progress report(s) that waited", file=sys.stderr)
        plan = resume_plan(state, parent_id)
        close_stale_runs(client, experiment_id, parent_id)
        reopen_parent(client, parent_id)
    else:
        tags = {"budget_macs": str(int(budget)), "task": task.label, "profile": profile.name,
                "git_commit": git_commit(), "search_steps": str(profile.search_steps),
                "search_warmup": str(profile.search_warmup), "command_line": job.command_line[:4000]}
        params = {"budget": short_budget(budget), "task": task.label, "profile": profile.name,
                  "attention": job.attention, "trials": job.trials, "concurrency": job.concurrency, "seed": job.seed,
                  "search_steps": profile.search_steps, "search_warmup": profile.search_warmup,
                  "precision": profile.precision}
        if job.shared:  # a sweep's trials and width nets fine-tune the supernet's weights for these steps
            params["sweep_train_steps"] = profile.sweep_steps()
        run_name = f"search-{short_budget(budget)}-{time.strftime('%m%d-%H%M%S')}"  # one name per search
        parent_id, plan = start_parent(client, experiment_id, run_name=run_name, tags=tags, params=params,
                                       command_line=job.command_line), None
    state.begin(parent_id, experiment_id, job.to_stored(budget))
    return parent_id, plan


def run_budgets(job: SearchJob, backbones: dict, resources: dict, *, run, store, client, width_resources: dict,
                shared: dict) -> list[dict]:
    """Every budget's search, recorded as it goes in the run directory's search state: each budget's parent run
    begun (or, resumed, continued: its finished trials kept, its interrupted ones run again, its retrains done)
    -> a sweep's shared supernet -> every budget's trials in one Ray Tune run -> their width nets, at once ->
    each budget's front, winners and summary, its parent ended FINISHED. Cut off, every parent not yet finished
    ends KILLED (Ctrl-C, SIGTERM) or FAILED, or, when its tracking server stayed away, interrupted for `resume`."""
    from orchestrator.search.driver import SearchRequest, run_search_on_ray
    from orchestrator.search.state import SearchState
    from orchestrator.tracking.runs import end_parent, ensure_experiment, experiment_name
    from orchestrator.search.front import record_width_points, search_front, tag_front, trial_rows, width_line
    from orchestrator.search.width import finish_width_points, start_width_points
    experiment_id = ensure_experiment(client, experiment_name(job.task.label), run.artifact_root, run.tracking_uri)
    state = SearchState(run.run_dir)
    requests, summaries = [], []
    try:
        for budget in job.budgets:
            parent_id, plan = open_search(job, budget, client, experiment_id, state, store)
            requests.append(SearchRequest(settings=trial_settings(job, budget, run), run=run, trials=job.trials,
                                          concurrency=job.concurrency, command_line=job.command_line,
                                          backbones=backbones[budget], resources=resources, parent_id=parent_id,
                                          resume=plan))
        if job.shared:  # trained while every parent is open: a sweep cut off while it trains is resumed by them
            supernet = sweep_supernet(job, run, store, shared)
            requests = [dataclasses.replace(r, settings=dataclasses.replace(r.settings, shared_supernet=supernet))
                        for r in requests]
            for request in requests:
                client.set_tag(request.parent_id, "shared_supernet", shared["uri"])
                if shared["resumed_from"] is not None:  # trained in this job: from its start, or a checkpoint
                    client.set_tag(request.parent_id, "shared_supernet_resumed_from_step", str(shared["resumed_from"]))
                    client.set_tag(request.parent_id, "shared_supernet_seconds", f"{shared['seconds']:.1f}")
        progress, reporter = progress_reporter(not job.json)

        def start_widths(finished: dict):  # the width nets train while the trials' records are sent
            if not job.width or not all(finished[r.settings.budget_macs] for r in requests):
                return None
            return start_width_points([(r.settings, r.parent_id, max(finished[r.settings.budget_macs],
                                                                     key=lambda t: t.psnr)) for r in requests],
                                      width_resources, client, experiment_id, seeds=job.width_seeds,
                                      resumed={r.parent_id for r in requests if r.resume is not None})
        try:
            recorded, begun = run_search_on_ray(requests, client, experiment_id, reporter, state, store=store,
                                                while_sending=start_widths)
        finally:
            progress.stop()
        raise_if_cancelled()  # a signal whose exception was dropped on the way (errors.py) cancels here
        for request in requests:
            if not recorded[request.settings.budget_macs]:
                raise UsageError("no trial finished; see the Ray logs under the run directory")
        widths = finish_width_points(begun, client, experiment_id, run_ids={
            t.trial: t.run_id for trials in recorded.values() for t in trials}) if begun else {}
        # the front and the width line from the search's own records (its trials, the store's table), not MLflow's
        name = experiment_name(job.task.label)
        rows, before = search_front(store, name, [row for r in requests for row in trial_rows(
            r.parent_id, r.settings.budget_macs, recorded[r.settings.budget_macs])])
        tag_front(client, rows, before)
        line = width_line(store, name, record_width_points(
            store, name, widths, {r.settings.budget_macs: r.parent_id for r in requests})) if job.width else []
        raise_if_cancelled()
        for request in requests:
            budget = request.settings.budget_macs
            summary = finish_search(job, request, recorded[budget], widths.get(budget), rows=rows, line=line,
                                    client=client, experiment_id=experiment_id, state=state, store=store)
            raise_if_cancelled()
            end_parent(client, request.parent_id, "FINISHED")
            state.end(request.parent_id, "finished")
            summaries.append(summary)
    except BaseException as err:
        stop_open_searches(err, requests[len(summaries):], client, experiment_id, state)
        raise
    return summaries


def stop_open_searches(err: BaseException, requests, client, experiment_id: str, state) -> None:
    """A search cut off: each budget not yet finished ends KILLED (Ctrl-C, SIGTERM) or FAILED, its trials' runs
    too. When the tracking server stayed away (TrackingAway), or goes away now, nothing waits for it: the search
    state says `interrupted`, and `resume` closes the runs and sends what waited."""
    from orchestrator.tracking import outage
    from orchestrator.tracking.runs import close_stale_runs, end_parent
    wait = outage.current()
    if wait is not None:
        wait.fail_fast = True  # a server away is not waited for again while stopping
    status = "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
    for request in requests:
        if not isinstance(err, outage.TrackingAway):
            try:
                close_stale_runs(client, experiment_id, request.parent_id, status)  # the trials it cut off
                end_parent(client, request.parent_id, status)
            except outage.TrackingAway:
                err = outage.TrackingAway(wait.uri, 0.0)
        state.end(request.parent_id, "interrupted" if isinstance(err, outage.TrackingAway) else status.lower())


def finish_search(job: SearchJob, request, recorded: list[TrialRecord], width: dict | None, *, rows: list[dict],
                  line: list[dict], client, experiment_id: str, state, store) -> dict:
    """One budget after its trials: its front (`rows`, the experiment's, from the search's own records) and the
    width line (`line`) on its parent, its trials in the table, the winners retrained, and its summary (its
    parent then ends FINISHED)."""
    from mlflow.entities import Metric

    from orchestrator.tracking.runs import experiment_name, log_front, summarise_parent
    from orchestrator.search.width import gain_over_width
    from orchestrator.retrain.winners import pick_winners, record_trials
    settings, parent_id, run = request.settings, request.parent_id, request.run
    budget, name = settings.budget_macs, experiment_name(job.task.label)
    summarise_parent(client, parent_id, rows)
    record_trials(store, name, parent_id, recorded, rows)
    title = f"{name}: PSNR vs MACs"
    drawn = [(p["psnr"], p["macs"]) for p in line]
    log_front(client, parent_id, rows, budget_macs=budget, title=title, width=drawn)
    front_ids = {r["run_id"] for r in rows if r["pareto"]}
    winners = pick_winners(recorded, front_ids, job.retrain_top)
    retrained = retrain_each(run, store, client, experiment_id, parent_id, settings, winners, job.retrain_workers,
                             state) if job.retrain else []
    if retrained:
        log_front(client, parent_id, rows, budget_macs=budget, title=title + " (stars: retrained)",
                  retrained=[(r["psnr"], r["macs"]) for r in retrained], suffix="_retrained", width=drawn)
    summary = summarise(name, parent_id, budget, job.task, job.profile, recorded, rows, retrained)
    if width is not None:
        summary["width"] = {**width, **gain_over_width(width, summary["trials"])}
        interval = summary["width"].get("interval") or {}
        client.log_batch(parent_id, metrics=[Metric("width_psnr", float(width["psnr"]), 0, 0)] + (
            [Metric("width_gain", float(summary["width"]["gain"]), 0, 0)] if summary["width"]["gain"] is not None else [])
            + [Metric(f"width_gain_{k}", float(interval[k]), 0, 0) for k in ("mean", "low", "high") if k in interval])
    return summary


def sweep_supernet(job: SearchJob, run, store, shared: dict) -> bytes:
    """The sweep's supernet: the one found stored before Ray started, or trained now, once per job."""
    from orchestrator.search.shared_supernet import train_shared_supernet
    if "bytes" not in shared:
        shared.update(train_shared_supernet(job, run, store))
    return shared["bytes"]


def retrain_each(run, store, client, experiment_id, parent_id, settings, winners, retrain_workers, state) -> list[dict]:
    """The winners retrained one by one, each outcome saved as it ends; a resumed search skips those it has.
    The budget's alias goes to the best winner."""
    from orchestrator.retrain.winners import retrain_winners
    done = state.retrains(parent_id)
    outcomes = []
    for rank, winner in enumerate(winners):
        raise_if_cancelled()
        if winner.run_id not in done:
            outcome, = retrain_winners(run=run, store=store, client=client, experiment_id=experiment_id,
                                       parent_id=parent_id, request_settings=settings, winners=[winner],
                                       retrain_workers=retrain_workers, set_alias=rank == 0)
            state.retrain_finished(parent_id, winner.run_id, outcome)
            done[winner.run_id] = outcome
        outcomes.append(done[winner.run_id])
    return outcomes


def summarise(name, parent_id, budget, task, profile, recorded: list[TrialRecord], rows, retrained) -> dict:
    front = {r["run_id"]: r["pareto"] for r in rows}
    by_trial = {r["trial_run_id"]: r for r in retrained}
    trials = []
    for item in sorted(recorded, key=lambda r: -r.psnr):
        genotype = item.genotype
        trials.append({"trial": item.trial, "run_id": item.run_id,
                       "backbone": {"channels": genotype.channels, "blocks": genotype.blocks, "stages": genotype.stages},
                       "positions": list(genotype.positions), "keys": [list(k) for k in genotype.keys],
                       "macs": item.macs, "macs_expected": item.result.get("macs_expected"),
                       "expected_keys": [list(k) for k in genotype.expected_keys],
                       "proxy_macs": item.proxy_macs, "position_scores": item.position_scores,
                       "params": int(item.result["params"]), "psnr": round(item.psnr, 4),
                       "ssim": round(float(item.result["ssim"]), 4), "pareto": bool(front.get(item.run_id, False)),
                       "attention_backend": item.result.get("attention_backend"),
                       "retrained_psnr": by_trial.get(item.run_id, {}).get("psnr"),
                       "artifact_uri": item.artifact_uri})
        if task.in_channels == 3 and item.result.get("psnr_rgb") is not None:  # a colour task: RGB beside Y
            trials[-1].update(psnr_rgb=round(float(item.result["psnr_rgb"]), 4),
                              retrained_psnr_rgb=by_trial.get(item.run_id, {}).get("psnr_rgb"))
    return {"experiment": name, "parent_run_id": parent_id, "task": task.label, "budget_macs": int(budget),
            "profile": profile.name, "precision": profile.precision, "trials": trials, "retrained": retrained}


def summary_lines(summary: dict) -> list[str]:
    """The search in an 80-column terminal: two lines per trial, nothing cut. The run ids are MLflow's, which
    `retrain --run-id` takes; the full genotypes and URIs are in `--json`."""
    from search_space.budget import short_budget
    lines = [f"{summary['experiment']}: search {summary['parent_run_id']}",
             f"{summary['task']} within {short_budget(summary['budget_macs'])}MACs, {summary['profile']} profile, "
             f"{summary.get('precision', 'fp32')}; * = on the front",
             f"{'MLflow run id (retrain --run-id)':<34}{'net':>7}{'GMACs':>7}"]
    color = any("psnr_rgb" in t for t in summary["trials"])  # PSNR is then Y's, with RGB beside it
    lines[-1] += f"{'Y':>7}{'RGB':>7}{'':2}{'retrained Y, RGB':>16}" if color else f"{'PSNR':>7}{'':2}{'retrained':>10}"

    def score(value) -> str:
        return "" if value is None else f"{value:.2f}"
    for t in summary["trials"]:
        b = t["backbone"]
        row = f"{t['run_id']:<34}{b['channels']:>4}x{b['blocks']:<2}{t['macs'] / 1e9:>7.2f}{t['psnr']:>7.2f}"
        if color:
            retrained = score(t["retrained_psnr"]) + (", " + score(t.get("retrained_psnr_rgb"))
                                                      if t.get("retrained_psnr_rgb") is not None else "")
            row += f"{score(t.get('psnr_rgb')):>7}{'*' if t['pareto'] else '':>2}{retrained:>16}"
        else:
            row += f"{'*' if t['pareto'] else '':>2}{score(t['retrained_psnr']):>10}"
        lines.append(row.rstrip())
        keys = ", ".join("+".join(map(str, k)) for k in t["keys"])
        expected = ""
        if t.get("expected_keys") and t.get("macs_expected") is not None:
            means = ", ".join("+".join(f"{k:.1f}" for k in ks) for ks in t["expected_keys"])
            expected = (f"; a query keeps {means} on average, {t['macs_expected'] / 1e9:.2f} GMACs expected against "
                        f"{t['macs'] / 1e9:.2f} at the caps")
        where = (f"ACLA after blocks {', '.join(map(str, t['positions']))} (keys per reference layer: {keys}"
                 f"{' at most' if expected else ''}{expected})"
                 if t["positions"] else "plain backbone (no attention module fits or pays)")
        lines += textwrap.wrap(where, 78, initial_indent="  ", subsequent_indent="    ")
        if t.get("position_scores") and "passed" in t["position_scores"][0]:
            from orchestrator.tracking.runs import position_decision
            lines += textwrap.wrap(position_decision(t["position_scores"], t["positions"]), 78, initial_indent="  ",
                                   subsequent_indent="    ")
    if summary.get("width"):
        from orchestrator.search.width import width_line_text
        lines += textwrap.wrap(width_line_text(summary["width"], summary["width"]), 78, subsequent_indent="  ")
    for r in summary["retrained"]:
        lines += [f"retrained -> {r.get('alias') or r.get('model_uri')}", f"  MLflow run {r['run_id']}"]
        if r.get("psnr_y") is not None and r.get("input_psnr_y") is not None:
            rgb = (f", RGB {r['psnr_rgb']:.2f} (input {r['input_psnr_rgb']:.2f})"
                   if r.get("psnr_rgb") is not None and r.get("input_psnr_rgb") is not None else "")
            trial = f"; its trial {r['trial_psnr']:.2f}" if r.get("trial_psnr") is not None else ""
            lines.append(f"  validation PSNR: Y {r['psnr_y']:.2f} (input {r['input_psnr_y']:.2f}){rgb}{trial}")
        if r.get("init"):
            lines += textwrap.wrap(f"trained {r['init']}", 78, initial_indent="  ", subsequent_indent="    ")
        if r.get("alias_withheld"):
            lines.append(f"  {r['alias_withheld']}")
    return lines


def print_summary(summary: dict) -> None:
    print("\n".join(summary_lines(summary)))
