"""The thin Ray driver: `acla-orch search` and `sweep`.

Ray touches the code here only: starting or joining Ray, the Ray Tune trial wrapper, Optuna through
OptunaSearch, a driver-side callback that records each finished trial in MLflow, and Ray Train retraining.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ray import tune

from .errors import UsageError, install_signal_handlers
from .inherit import save_trial_weights
from .callbacks import RecordTrials, StopOnStoreFailure
from .records import TrialRecord
from .settings import RunSettings
from .trial import TrialSettings, run_trial


@dataclass
class SearchRequest:
    settings: TrialSettings
    run: RunSettings
    trials: int
    concurrency: int
    command_line: str
    backbones: list[str]  # the budget's backbones (workers/backbones.py), checked before the search started
    resources: dict  # what each trial asks of the cluster (cluster.trial_resources): {"cpu": n, "gpu": 0 or 1}


def ray_temp_dir(run_dir: Path) -> Path:
    """Ray's files live under the run directory. Its socket paths must stay short (UNIX limit ~107 bytes), so a
    long run directory gets a short folder in /tmp with a link `<run dir>/ray` to it."""
    wanted = run_dir / "ray"
    if len(str(wanted)) <= 40:
        wanted.mkdir(parents=True, exist_ok=True)
        return wanted
    short = Path("/tmp") / f"acla-ray-{hashlib.sha1(str(run_dir).encode()).hexdigest()[:10]}"
    short.mkdir(parents=True, exist_ok=True)
    if not wanted.is_symlink():
        wanted.parent.mkdir(parents=True, exist_ok=True)
        if not wanted.exists():
            wanted.symlink_to(short)
    return short


def keep_local_ray_on_loopback() -> None:
    """The local Ray a search starts listens on 127.0.0.1 only.

    Ray 2.60 binds its GCS, raylet and worker servers to the node's address, and on Linux takes the machine's
    outward IP for it (it turns a requested 127.0.0.1 back into that IP); its single-machine mode, which it
    uses on macOS and Windows and `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` selects, takes the loopback address
    instead. That switch is read when Ray is imported, so the driver's already-read copy is set too; the
    processes Ray starts read the environment. Only for a Ray this process starts: a driver joining a cluster
    must advertise an address the other nodes reach."""
    from ray._private import ray_constants
    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def no_idle_workers_at_start() -> None:
    """A new local raylet starts as many idle Python workers as it has CPUs, for the driver's first tasks. A
    search's trials never take them: Tune gives each trial actor a runtime_env, which needs a worker of its own.
    So they were started, and imported Ray, for nothing (2 of them on 2 CPUs: 2.2 of the 25 CPU-seconds of a
    one-trial smoke search, measured per process; without them 0.8, for the one worker a plain actor then
    starts when it is needed). Unless the user set it, the raylet is told not to."""
    os.environ.setdefault("RAY_prestart_worker_first_driver", "0")


def agent_port_of_its_own() -> None:
    """Give the local Ray's dashboard agent a free HTTP port instead of Ray's fixed 52365.

    Ray 2.60 with ray[default] starts a dashboard agent beside every local raylet, even without the dashboard, and
    the raylet waits for it. Where another Ray already holds 52365 (a second search on the machine, the test beside
    this one), the agent retries for 3.3 s and then goes on without its HTTP server: `ray.init` took 8.4 s instead
    of 3.4. `ray.init` has no setting for this port, so it goes in as the default of RayParams, which builds the
    node's parameters; a Ray without that parameter keeps its own default."""
    import socket

    from ray._private.parameter import RayParams
    init = RayParams.__init__
    defaults, code = list(init.__defaults__ or ()), init.__code__
    names = code.co_varnames[code.co_argcount - len(defaults):code.co_argcount]
    if "dashboard_agent_listen_port" not in names:
        return
    with socket.socket() as probe:  # a port free now; the agent binds it a second later
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    defaults[names.index("dashboard_agent_listen_port")] = port
    init.__defaults__ = tuple(defaults)


def require_local_token() -> None:
    """Token authentication for the local Ray this process starts, whatever the caller's environment says.

    The cluster listens on loopback only (keep_local_ray_on_loopback), but other users of the same machine reach
    loopback too; the token stops them. Unless the user brings one (RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH), a
    fresh random one is made for this run and held in the environment that Ray's processes inherit: it is never
    written to a file (Ray's own default would save one to ~/.ray/auth_token)."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        # Unset, Ray 2.60 turns token authentication on for a new local cluster, and refreshes the config it
        # read at import; set to anything else ("disabled"), it would not.
        os.environ.pop("RAY_AUTH_MODE", None)
    if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)


@contextmanager
def ray_session(run: RunSettings):
    """Join RAY_ADDRESS/--address, or start a local Ray sized to this machine; always shut it down."""
    import ray
    kwargs = dict(include_dashboard=False, log_to_driver=False, configure_logging=True, logging_level="ERROR")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    # Train's controller polls its workers every 2 s by default, and a retraining's end waited for the next poll:
    # 3.1 s between the last report and the shutdown of a smoke retraining, 0.9 s at 0.5 s (Train hands the
    # driver's setting to its controller).
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # Ray Tune's own SIGINT handler stops the trials and lets fit() return normally, which would read as a
    # finished search (retraining a winner of 2 of 12 trials and moving the alias); without it Ctrl-C raises
    # KeyboardInterrupt here, and the search is marked KILLED.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    if run.ray_address in (None, "", "local"):
        require_local_token()
        keep_local_ray_on_loopback()
        agent_port_of_its_own()
        no_idle_workers_at_start()
        ray.init(num_cpus=os.cpu_count(), _temp_dir=str(ray_temp_dir(run.run_dir)), **kwargs)
    else:
        join_cluster(ray, run.ray_address, kwargs)
    # ray.init installs a C++ failure handler for SIGTERM that dumps a stack and aborts (exit 134); put back
    # the ones that cancel cleanly (runs KILLED, Ray shut down, exit 143 or 130).
    install_signal_handlers()
    try:
        yield ray
    finally:
        ray.shutdown()


def join_cluster(ray, address: str, kwargs: dict) -> None:
    """ray.init on a cluster, with what Ray's C++ client writes to stderr meanwhile held back: a refused token
    shows there only (a warning a second, then a plain "Failed to connect"), so it is read to tell the user
    which it was; on success it is passed on."""
    with tempfile.TemporaryFile() as held:
        saved = os.dup(2)
        os.dup2(held.fileno(), 2)
        try:
            ray.init(address=address, **kwargs)
            error = None
        except ray.exceptions.AuthenticationError:
            error = token_refused(address)
        except (ConnectionError, RuntimeError) as err:
            error = f"Ray is not reachable at {address}: {err}"
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        held.seek(0)
        written = held.read().decode(errors="replace")
    if error is None:
        sys.stderr.write(written)
        return
    if any(mark in written or mark in error for mark in ("InvalidAuthToken", "Unauthenticated", "authentication token")):
        error = token_refused(address)
    raise UsageError(error)


def token_refused(address: str) -> str:
    return (f"the Ray cluster at {address} refused this client: its authentication token is missing or wrong; "
            f"set RAY_AUTH_MODE=token and the cluster's token (RAY_AUTH_TOKEN, or the file ~/.ray/auth_token)")


def tune_trial(config: dict, settings: TrialSettings, weights=None) -> None:
    """Ray Tune's view of a trial: set the thread count to the CPUs granted, run, report its progress as it
    goes (the driver logs it to the trial's MLflow run) and its result at the end. Its proxy-trained weights go
    to the driver on the `weights` queue (the driver stores them; a trial holds no store credentials)."""
    import ray
    use_granted_cpus()
    keep = None if weights is None else functools.partial(put_weights, weights, tune.get_context().get_trial_id())
    result = run_trial(config, settings, report=tune.report, keep_weights=keep)
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


def use_granted_cpus() -> None:
    """Inside a Ray task or trial: as many torch threads as CPUs Ray granted it."""
    import ray
    import torch
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))


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


def budget_label(budget_macs: float) -> str:
    """`budget-50G` (or `budget-800M`): a valid MLflow alias."""
    giga = budget_macs / 1e9
    return f"budget-{giga:g}G" if giga >= 1 and float(giga).is_integer() else f"budget-{budget_macs / 1e6:g}M".replace(".", "p")


def search_space(feasible: list[str], profile) -> dict:
    """Optuna's space: the budget's backbones, and the search's rates within 3x of the profile's."""
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


def run_search_on_ray(request: SearchRequest, client, experiment_id: str, parent_id: str, reporter, state,
                      resume: ResumePlan | None = None, store=None) -> list[dict]:
    """Optuna through Ray Tune; each trial's start and end go to the search state, and each finished trial is
    recorded in MLflow from the driver as it ends, its proxy-trained weights in `store` (inherit.TRIAL_WEIGHTS).
    A resumed search runs only the trials it still owes."""
    import optuna
    import ray
    from ray.util.queue import Queue
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    from ray.tune.search.optuna import OptunaSearch

    from .sampler import ReproducibleTPE
    from .tracking import TRIAL_RESULT_KEYS, log_failed_trial, log_progress, log_trial, start_trial_run

    settings = request.settings
    storage = optuna.storages.RDBStorage(f"sqlite:///{request.run.run_dir / 'optuna.db'}")
    study = study_name(settings, parent_id)
    prepare_study(storage, study, resume)
    searcher = OptunaSearch(space=search_space(request.backbones, settings.profile), metric=["psnr", "macs"], mode=["max", "min"],
                            study_name=study, storage=storage, sampler=ReproducibleTPE(settings.seed, n_startup_trials=4))
    search_tags = {"budget_macs": str(int(settings.budget_macs)), "task": settings.task.label,
                   "task_spec": json.dumps(dataclasses.asdict(settings.task)), "profile": settings.profile.name}
    recorded: list[TrialRecord] = list(resume.recorded) if resume else []
    remaining = request.trials - (resume.done if resume else 0)
    if remaining <= 0:
        return recorded

    runs: dict[str, str] = {}  # Tune's trial id -> its MLflow run, created when the trial starts

    def run_of(trial) -> str:
        if trial.trial_id not in runs:
            runs[trial.trial_id] = start_trial_run(client, experiment_id, parent_id, trial_id=trial.trial_id,
                                                   params=dict(trial.config), search_tags=search_tags)
        return runs[trial.trial_id]

    def on_start(trial) -> None:  # its MLflow run first: a trial the state calls running always has one
        run_of(trial)
        state.trial_started(parent_id, trial.trial_id, dict(trial.config), settings.seed)

    def on_result(trial, result) -> None:
        if "progress_phase" in result:
            log_progress(client, run_of(trial), result)

    def on_complete(trial) -> None:
        result = trial.last_result or {}
        if "genotype" not in result:
            return
        params = dict(trial.config)
        run_id = log_trial(client, run_of(trial), result=result)
        take_weights(weights, pending)
        if store is not None and trial.trial_id in pending:
            save_trial_weights(store, run_id, pending.pop(trial.trial_id))  # a failure leaves none: from scratch
        artifact_uri = client.get_run(run_id).info.artifact_uri
        result = {k: v for k, v in result.items() if k in TRIAL_RESULT_KEYS}
        state.trial_finished(parent_id, trial.trial_id, run_id, result, artifact_uri)
        recorded.append(TrialRecord(trial=trial.trial_id, run_id=run_id, params=params, result=result,
                                    artifact_uri=artifact_uri))
        reporter(len(recorded), request.trials)

    def on_error(trial) -> None:
        error = trial_error(trial)
        run_id = log_failed_trial(client, run_of(trial), error=error)
        state.trial_failed(parent_id, trial.trial_id, run_id, error)
        reporter(len(recorded), request.trials)

    recorder = RecordTrials(on_complete, on_error, on_start, on_result)
    stopper = StopOnStoreFailure(recorder.key, request.run.storage if request.run.storage.is_s3 else None)
    keep_credentials_out_of_trial_runtime_envs()
    pending: dict[str, bytes] = {}  # trial id -> its weights, until the trial is recorded
    weights = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": NodeAffinitySchedulingStrategy(
        ray.get_runtime_context().get_node_id(), soft=True)})  # on the driver's node, which it dies with
    trainable = tune.with_resources(tune.with_parameters(tune_trial, settings=settings, weights=weights),
                                    request.resources)
    tuner = tune.Tuner(trainable,
                       tune_config=tune.TuneConfig(search_alg=searcher, num_samples=remaining,
                                                   max_concurrent_trials=request.concurrency),
                       run_config=tune.RunConfig(name=f"{study}-{int(time.time())}",
                                                 storage_path=str(request.run.run_dir / "tune"),
                                                 # a trial whose worker dies is run once more, then failed
                                                 failure_config=tune.FailureConfig(max_failures=1),
                                                 stop=stopper, callbacks=[recorder], verbose=0))
    # A trial reports its progress (losses by step) before its result; those reports carry no psnr/macs, which
    # Tune's strict check would refuse. The multi-objective searcher reads only each trial's final result.
    strict = os.environ.get("TUNE_DISABLE_STRICT_METRIC_CHECKING")
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
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
    return recorded

