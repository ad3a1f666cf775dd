"""The thin Ray driver: `acla-orch search` and `sweep`.

Ray touches the code here only: starting or joining Ray, the Ray Tune trial wrapper, Optuna through
OptunaSearch, a driver-side callback that records each finished trial in MLflow, and Ray Train retraining.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ray import tune

from orchestrator.search.budget_search import BUDGET_KEY, BudgetSearch, own_config
from orchestrator.retrain.inherit import save_trial_weights
from orchestrator.search.callbacks import RecordTrials, StopOnStoreFailure
from orchestrator.runtime.cluster import use_granted_cpus
from orchestrator.runtime.records import budget_label, TrialRecord
from orchestrator.runtime.settings import RunSettings
from orchestrator.search.trial import TrialSettings, run_trial


@dataclass
class SearchRequest:
    """One budget's part of a Tune run: what its trials need, its parent MLflow run, and what a resumed search
    already has (None: a new one). The run's trials share `run`, `concurrency` and `resources`."""
    settings: TrialSettings
    run: RunSettings
    trials: int
    concurrency: int
    command_line: str
    backbones: list[str]  # the budget's backbones (workers/backbones.py), checked before the search started
    resources: dict  # what each trial asks of the cluster (cluster.trial_resources): {"cpu": n, "gpu": 0 or 1}
    parent_id: str = ""
    resume: "ResumePlan | None" = None


def tune_trial(config: dict, settings: dict, weights=None) -> None:
    """Ray Tune's view of a trial: set the thread count to the CPUs granted, run with its budget's settings
    (`settings`: {budget: TrialSettings}), report its progress as it goes (the driver logs it to the trial's MLflow
    run) and its result at the end. Its proxy-trained weights go to the driver on the `weights` queue (the driver
    stores them; a trial holds no store credentials)."""
    import ray
    use_granted_cpus()
    keep = None if weights is None else functools.partial(put_weights, weights, tune.get_context().get_trial_id())
    result = run_trial(own_config(config), settings[config[BUDGET_KEY]], report=tune.report, keep_weights=keep)
    result["node_id"] = ray.get_runtime_context().get_node_id()  # which Ray node, where nodes share a host
    tune.report(result)


def put_weights(queue, trial_id: str, state: dict) -> None:
    """A trial's weights to the driver, as torch.save bytes. A queue that is gone (its driver with it) drops them:
    the retraining then starts from scratch, and says so."""
    import io

    import torch
    from ray.exceptions import RayActorError
    from ray.util.queue import Full
    buffer = io.BytesIO()
    torch.save(state, buffer)
    try:
        queue.put({"trial": trial_id, "state": buffer.getvalue()}, timeout=120)
    except (Full, RayActorError):
        pass


def take_weights(queue, pending: dict) -> None:
    """Everything on the weights queue into `pending` ({trial id: bytes})."""
    from ray.exceptions import RayActorError
    from ray.util.queue import Empty
    while True:
        try:
            item = queue.get_nowait()
        except (Empty, RayActorError):
            return
        pending[item["trial"]] = item["state"]


def keep_credentials_out_of_trial_runtime_envs() -> None:
    """Ray Tune copies the driver's AWS credentials into each trial actor's runtime_env, which Ray's
    runtime_env_agent then writes in plain text to its log under the run directory. Trials need no credentials
    of their own here (the driver writes MLflow and the artifact store; on a local Ray the workers inherit the
    environment anyway, and cluster nodes use their own role), so they are taken off Tune's list."""
    from ray.tune.execution import class_cache
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN"):
        class_cache.ENV_VARS_TO_PROPAGATE.discard(name)


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def tune_search_space(feasible: list[str], profile, shared: bool = False) -> dict:
    """Optuna's space: the budget's backbones, and the search's rates within 3x of the profile's. A sweep's trial
    (`shared`) only derives from the supernet trained before it, with its own rates: its backbone is the choice."""
    if shared:
        return {"backbone": tune.choice(feasible)}
    return {"backbone": tune.choice(feasible), "penalty_weight": tune.loguniform(0.1, 10.0),
            "weight_lr": tune.loguniform(profile.weight_lr / 3, profile.weight_lr * 3),
            "arch_lr": tune.loguniform(profile.arch_lr / 3, profile.arch_lr * 3),
            "gate_temperature": tune.uniform(0.5, 2.0)}


@dataclass
class ResumePlan:
    """What a resumed search already has: its finished trials (as recorded), how many trials are done (finished
    or failed), and the configs of the trials that were running when it stopped (run again first)."""
    recorded: list[TrialRecord]
    done: int
    interrupted: list[dict]


def study_name(settings: TrialSettings, parent_id: str) -> str:
    return f"acla-{settings.task.label}-{budget_label(settings.budget_macs)}-{settings.profile.name}-{parent_id[:12]}"


def prepare_study(storage, name: str, resume: ResumePlan | None) -> None:
    """On resume: the trials Optuna still holds as RUNNING (their driver died) are failed, and the interrupted
    configs are queued to run again, as they were."""
    import optuna
    from optuna.trial import TrialState
    if resume is None:
        return
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:  # the search stopped before Optuna's first trial
        return
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    for config in resume.interrupted:
        study.enqueue_trial(config, skip_if_exists=False)


def trial_error(trial) -> str:
    """The last line of the trial's error (Tune keeps the traceback in a file), for MLflow and the state."""
    path = getattr(trial, "error_file", None) or ""
    try:
        lines = [line for line in Path(path).read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        lines = []
    return lines[-1][:2000] if lines else f"trial failed ({path or 'no error file'})"


def run_search_on_ray(requests: list[SearchRequest], client, experiment_id: str, reporter, state,
                      store=None, while_sending=None) -> tuple[dict[float, list[TrialRecord]], object]:
    """Every budget's trials in one Ray Tune run, each proposed by its budget's Optuna study (budget_search.py);
    each trial's start and end go to the search state of its budget's parent run at once, and its MLflow record
    (its run, progress, result and artifacts; its proxy-trained weights in `store`, inherit.TRIAL_WEIGHTS) through
    one sender thread, in order, so that trials go on while the tracking server is away (tracking/outage.py).
    A resumed search runs only the trials it still owes. Once the trials are over, `while_sending({budget: its
    finished trials})` starts what needs only their results (their run ids may still be unknown: the width nets),
    while the records still queued are sent. Returns ({budget: its finished trials, recorded}, what it returned)."""
    import optuna
    import ray
    from ray.util.queue import Queue
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    from ray.tune.search.optuna import OptunaSearch

    from orchestrator.search.sampler import ReproducibleTPE
    from orchestrator.tracking.outage import Sender, current
    from orchestrator.tracking.runs import TRIAL_RESULT_KEYS, log_failed_trial, log_progress, start_trial_run

    first = requests[0]
    by_budget = {request.settings.budget_macs: request for request in requests}
    storage = optuna.storages.RDBStorage(f"sqlite:///{first.run.run_dir / 'optuna.db'}")
    searchers, owed, search_tags = {}, {}, {}
    recorded: dict[float, list[TrialRecord]] = {}
    for budget, request in by_budget.items():
        settings, shared = request.settings, request.settings.shared_supernet is not None
        study = study_name(settings, request.parent_id)
        prepare_study(storage, study, request.resume)
        searchers[budget] = OptunaSearch(space=tune_search_space(request.backbones, settings.profile, shared=shared),
                                         metric=["psnr", "macs"], mode=["max", "min"], study_name=study,
                                         storage=storage, sampler=ReproducibleTPE(settings.seed, n_startup_trials=4,
                                                                                  distinct=shared))
        owed[budget] = max(request.trials - (request.resume.done if request.resume else 0), 0)
        search_tags[budget] = trial_search_tags(settings)
        recorded[budget] = list(request.resume.recorded) if request.resume else []
    total = sum(request.trials for request in requests)
    finished = {budget: list(trials) for budget, trials in recorded.items()}  # as they end, before they are sent
    if not any(owed.values()):
        return recorded, while_sending(finished) if while_sending else None
    searcher = BudgetSearch(searchers, owed, metric=["psnr", "macs"], mode=["max", "min"])

    runs: dict[str, str] = {}  # Tune's trial id -> its MLflow run (the sender's: made when the trial starts)
    ended = [sum(len(r) for r in recorded.values())]  # trials finished, kept in the state
    sender = Sender(current())

    def budget_of(trial) -> float:
        return trial.config[BUDGET_KEY]

    def parent_of(trial) -> str:
        return by_budget[budget_of(trial)].parent_id

    def make_run(parent: str, trial_id: str, params: dict, tags: dict) -> None:  # in the sender
        if trial_id not in runs:
            runs[trial_id] = start_trial_run(client, experiment_id, parent, trial_id=trial_id, params=params,
                                             search_tags=tags)
            state.trial_run(parent, trial_id, runs[trial_id])

    def record(budget: float, parent: str, trial_id: str, params: dict, result: dict, trial_weights) -> None:
        recorded[budget].append(record_finished_trial(client, store, state, parent, trial_id, runs[trial_id],
                                                      params, result, trial_weights))

    def on_start(trial) -> None:
        config, budget = own_config(trial.config), budget_of(trial)
        state.trial_started(parent_of(trial), trial.trial_id, config, by_budget[budget].settings.seed)
        sender.submit(make_run, parent_of(trial), trial.trial_id, config, search_tags[budget])

    def send_progress(parent: str, trial_id: str, result: dict) -> None:  # in the sender
        log_progress(client, runs[trial_id], result)

    def on_result(trial, result) -> None:
        if "progress_phase" in result:
            sender.submit(send_progress, parent_of(trial), trial.trial_id,
                          {k: v for k, v in result.items() if k.startswith("progress_")})

    def on_complete(trial) -> None:
        result = trial.last_result or {}
        if "genotype" not in result:
            return
        result = {k: v for k, v in result.items() if k in TRIAL_RESULT_KEYS}
        state.trial_finished(parent_of(trial), trial.trial_id, result)  # kept here first, whatever MLflow does
        finished[budget_of(trial)].append(TrialRecord(trial=trial.trial_id, run_id=runs.get(trial.trial_id, ""),
                                                      params=own_config(trial.config), result=result, artifact_uri=""))
        take_weights(weights, pending)
        sender.submit(record, budget_of(trial), parent_of(trial), trial.trial_id, own_config(trial.config), result,
                      pending.pop(trial.trial_id, None))
        ended[0] += 1
        reporter(ended[0], total)

    def on_error(trial) -> None:
        error = trial_error(trial)
        state.trial_failed(parent_of(trial), trial.trial_id, error)
        sender.submit(lambda trial_id: log_failed_trial(client, runs[trial_id], error=error), trial.trial_id)
        reporter(ended[0], total)

    recorder = RecordTrials(on_complete, on_error, on_start, on_result)
    stopper = StopOnStoreFailure(recorder.key, first.run.storage if first.run.storage.is_s3 else None,
                                 sender=sender)
    keep_credentials_out_of_trial_runtime_envs()
    pending: dict[str, bytes] = {}  # trial id -> its weights, until the trial is recorded
    weights = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": NodeAffinitySchedulingStrategy(
        ray.get_runtime_context().get_node_id(), soft=True)})  # on the driver's node, which it dies with
    settings = {budget: request.settings for budget, request in by_budget.items()}
    trainable = tune.with_resources(tune.with_parameters(tune_trial, settings=settings, weights=weights),
                                    first.resources)
    name = study_name(first.settings, first.parent_id) if len(requests) == 1 else \
        f"acla-{first.settings.task.label}-budgets-{first.settings.profile.name}-{first.parent_id[:12]}"
    tuner = tune.Tuner(trainable,
                       tune_config=tune.TuneConfig(search_alg=searcher, num_samples=sum(owed.values()),
                                                   max_concurrent_trials=first.concurrency,
                                                   # a trial actor runs the next trial of its size, of any
                                                   # budget: a fresh one imports Ray Tune, torch and the trial
                                                   # code again (a smoke sweep of 2 x 2 trials: 71 -> 61 CPU-s)
                                                   reuse_actors=True),
                       run_config=tune.RunConfig(name=f"{name}-{int(time.time())}",
                                                 storage_path=str(first.run.run_dir / "tune"),
                                                 # a trial whose worker dies is run once more, then failed
                                                 failure_config=tune.FailureConfig(max_failures=1),
                                                 stop=stopper, callbacks=[recorder], verbose=0))
    # A trial reports its progress (losses by step) before its result; those reports carry no psnr/macs, which
    # Tune's strict check would refuse. The multi-objective searcher reads only each trial's final result.
    strict = os.environ.get("TUNE_DISABLE_STRICT_METRIC_CHECKING")
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    try:
        try:
            tuner.fit()
        finally:
            if strict is None:
                os.environ.pop("TUNE_DISABLE_STRICT_METRIC_CHECKING", None)
            else:
                os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = strict
            try:
                recorder.finish()
            finally:
                stopper.finish()
                ray.kill(weights.actor, no_restart=True)
        # the trials are over: what needs only their results starts, then every record is sent (an outage is
        # waited for, up to the patience)
        begun = while_sending(finished) if while_sending else None
        sender.drain()
    except BaseException:  # cut off, or the server stayed away: no record lands after the search closes its runs;
        sender.abandon()  # what was not sent waits in the search state, and `resume` sends it
        keep_waiting_progress(state, sender.unsent, send_progress)
        raise
    return recorded, begun


def keep_waiting_progress(state, unsent: list[tuple], send_progress) -> None:
    """The progress reports the sender never sent, into the search state, in order, each under its search: `resume`
    sends them (the trials' results are there already, send_what_waited)."""
    by_parent: dict[str, list] = {}
    for write, args, _ in unsent:
        if write is send_progress:
            parent, trial_id, report = args
            by_parent.setdefault(parent, []).append((trial_id, report))
    for parent, reports in by_parent.items():
        state.progress_waiting(parent, reports)


def trial_search_tags(settings: TrialSettings) -> dict:
    """The tags each trial run of a budget carries."""
    return {"budget_macs": str(int(settings.budget_macs)), "task": settings.task.label,
            "task_spec": json.dumps(dataclasses.asdict(settings.task)), "profile": settings.profile.name}


def record_finished_trial(client, store, state, parent: str, trial_id: str, run_id: str, params: dict, result: dict,
                          trial_weights: bytes | None) -> TrialRecord:
    """A finished trial's MLflow record (params, metrics, artifacts; FINISHED), its weights in the store (none
    where they were lost: its winner then retrains from scratch), and its state marked recorded."""
    from orchestrator.tracking.runs import log_trial
    log_trial(client, run_id, result=result)
    if store is not None and trial_weights is not None:
        save_trial_weights(store, run_id, trial_weights)
    artifact_uri = client.get_run(run_id).info.artifact_uri
    state.trial_recorded(parent, trial_id, run_id, artifact_uri)
    return TrialRecord(trial=trial_id, run_id=run_id, params=params, result=result, artifact_uri=artifact_uri)


def send_what_waited(client, store, state, experiment_id: str, parent: str, settings: TrialSettings) -> tuple[int, int]:
    """A resumed search's records that never reached the server (it was away, and the search gave up waiting):
    the finished trials' runs made where there were none, their progress reports and results recorded; the
    progress of trials cut off sent to their runs (which the resume then closes as KILLED). Their weights went with
    the driver: their winners retrain from scratch. Returns (trials, progress reports) sent."""
    from orchestrator.tracking.runs import start_trial_run
    waiting, progress = state.unsent(parent), state.waiting_progress(parent)
    reports = 0
    for trial in waiting:
        run_id = trial["mlflow_run_id"] or start_trial_run(client, experiment_id, parent, trial_id=trial["trial_id"],
                                                           params=trial["config"],
                                                           search_tags=trial_search_tags(settings))
        state.trial_run(parent, trial["trial_id"], run_id)
        reports += send_progress_waiting(client, state, parent, trial["trial_id"], run_id, progress)
        record_finished_trial(client, store, state, parent, trial["trial_id"], run_id, trial["config"],
                              trial["result"], None)
    for trial in state.trials(parent):  # cut off while it ran: its curve so far, on its run
        if trial["trial_id"] in progress and trial["mlflow_run_id"]:
            reports += send_progress_waiting(client, state, parent, trial["trial_id"], trial["mlflow_run_id"],
                                             progress)
    return len(waiting), reports


def send_progress_waiting(client, state, parent: str, trial_id: str, run_id: str, progress: dict) -> int:
    """One trial's progress reports that waited, on its run, then forgotten by the state."""
    from orchestrator.tracking.runs import log_progress
    reports = progress.pop(trial_id, [])
    for report in reports:
        log_progress(client, run_id, report)
    if reports:
        state.progress_sent(parent, trial_id)
    return len(reports)
