"""The thin Ray driver: `acla-orch search` and `sweep`.

Ray touches the code here only: starting or joining Ray, the Ray Tune trial wrapper, Optuna through
OptunaSearch, a driver-side callback that records each finished trial in MLflow, and Ray Train retraining.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import secrets
import signal
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ray import tune

from .errors import UsageError, raise_terminated
from .settings import RunSettings
from .trial import TrialSettings, feasible_backbones, run_trial


@dataclass
class SearchRequest:
    settings: TrialSettings
    run: RunSettings
    trials: int
    concurrency: int
    command_line: str


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


def require_local_token() -> None:
    """Token authentication for the local Ray this process starts, whatever the caller's environment says.

    Ray 2.60 binds its GCS, raylet and worker gRPC servers to every interface, and will not take a loopback node
    address (`ray.init(_node_ip_address="127.0.0.1")` is turned back into the machine's IP), so the cluster
    cannot be kept off the network; what stops a stranger on it is the token. Unless the user brings one
    (RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH), a fresh random one is made for this run and held in the
    environment that Ray's processes inherit: it is never written to a file (Ray's own default would save one
    to ~/.ray/auth_token)."""
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
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # Ray Tune's own SIGINT handler stops the trials and lets fit() return normally, which would read as a
    # finished search (retraining a winner of 2 of 12 trials and moving the alias); without it Ctrl-C raises
    # KeyboardInterrupt here, and the search is marked KILLED.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    if run.ray_address in (None, "", "local"):
        require_local_token()
        ray.init(num_cpus=os.cpu_count(), _temp_dir=str(ray_temp_dir(run.run_dir)), **kwargs)
    else:
        try:
            ray.init(address=run.ray_address, **kwargs)
        except (ConnectionError, RuntimeError) as err:
            raise UsageError(f"Ray is not reachable at {run.ray_address}: {err}") from None
    # ray.init installs a C++ failure handler for SIGTERM that dumps a stack and aborts (exit 134); put back
    # the one that cancels like Ctrl-C (runs KILLED, Ray shut down, exit 143).
    signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield ray
    finally:
        ray.shutdown()


def tune_trial(config: dict, settings: TrialSettings) -> None:
    """Ray Tune's view of a trial: set the thread count to the CPUs granted, run, report once."""
    use_granted_cpus()
    tune.report(run_trial(config, settings))


def use_granted_cpus() -> None:
    """Inside a Ray task or trial: as many torch threads as CPUs Ray granted it."""
    import ray
    import torch
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))


class RecordTrials(tune.Callback):
    """A Ray Tune callback that runs in the driver and hands each finished or failed trial to a handler.

    Tune pickles its run config, and the handlers hold the MLflow client and the progress bar, so they stay in
    a driver-side registry and the callback pickles as its key alone. A handler's error is kept for the driver
    to re-raise after the trials: Tune would only log its traceback and go on.
    """
    _handlers: dict[int, tuple] = {}
    errors: dict[int, BaseException] = {}

    def __init__(self, on_complete, on_error, key: int | None = None) -> None:
        self.key = id(on_complete) if key is None else key
        RecordTrials._handlers.setdefault(self.key, (on_complete, on_error))

    def __reduce__(self):
        return (_restore_callback, (self.key,))

    def _call(self, which: int, trial) -> None:
        handlers = RecordTrials._handlers.get(self.key)
        if handlers is None or self.key in RecordTrials.errors:  # restored elsewhere, or already failed
            return
        try:
            handlers[which](trial)
        except Exception as err:
            RecordTrials.errors[self.key] = err

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._call(0, trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._call(1, trial)

    def finish(self) -> None:
        """Forget the handlers; re-raise a handler's error."""
        RecordTrials._handlers.pop(self.key, None)
        error = RecordTrials.errors.pop(self.key, None)
        if error is not None:
            raise error


def _restore_callback(key: int) -> RecordTrials:
    return RecordTrials(None, None, key=key)


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


def check_feasible(settings: TrialSettings) -> list[str]:
    from search_space.budget import format_macs
    feasible, smallest = feasible_backbones(settings.task, settings.profile, settings.budget_macs)
    if not feasible:
        raise UsageError(f"budget {format_macs(settings.budget_macs)}MACs is below the smallest feasible network "
                         f"({smallest} MACs = {format_macs(smallest)}FLOPs for {settings.task.label} with the "
                         f"{settings.profile.name} profile); pass --budget {format_macs(smallest)} or more")
    return feasible


def run_search_on_ray(request: SearchRequest, client, experiment_id: str, parent_id: str, reporter) -> list[dict]:
    """Optuna through Ray Tune; each finished trial is recorded in MLflow from the driver as it ends."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    from .tracking import log_failed_trial, log_trial

    settings = request.settings
    feasible = check_feasible(settings)
    storage = optuna.storages.RDBStorage(f"sqlite:///{request.run.run_dir / 'optuna.db'}")
    study = f"acla-{settings.task.label}-{budget_label(settings.budget_macs)}-{settings.profile.name}"
    searcher = OptunaSearch(space=search_space(feasible, settings.profile), metric=["psnr", "macs"], mode=["max", "min"],
                            study_name=study, storage=storage,
                            sampler=optuna.samplers.TPESampler(seed=settings.seed, n_startup_trials=4))
    search_tags = {"budget_macs": str(int(settings.budget_macs)), "task": settings.task.label,
                   "task_spec": json.dumps(dataclasses.asdict(settings.task)), "profile": settings.profile.name}
    recorded: list[dict] = []

    def on_complete(trial) -> None:
        result = trial.last_result or {}
        if "genotype" not in result:
            return
        params = dict(trial.config)
        run_id = log_trial(client, experiment_id, parent_id, trial_id=trial.trial_id, params=params,
                           result=result, search_tags=search_tags)
        recorded.append({"trial": trial.trial_id, "run_id": run_id, "params": params, "result": result,
                         "artifact_uri": client.get_run(run_id).info.artifact_uri})
        reporter(len(recorded), request.trials)

    def on_error(trial) -> None:
        log_failed_trial(client, experiment_id, parent_id, trial_id=trial.trial_id, params=dict(trial.config),
                         error=str(trial.error_file or "trial failed"), search_tags=search_tags)
        reporter(len(recorded), request.trials)

    recorder = RecordTrials(on_complete, on_error)
    keep_credentials_out_of_trial_runtime_envs()
    cpus = max(1, (os.cpu_count() or 1) // request.concurrency)
    import torch
    gpus = 1 if torch.cuda.is_available() else 0
    trainable = tune.with_resources(tune.with_parameters(tune_trial, settings=settings), {"cpu": cpus, "gpu": gpus})
    tuner = tune.Tuner(trainable,
                       tune_config=tune.TuneConfig(search_alg=searcher, num_samples=request.trials,
                                                   max_concurrent_trials=request.concurrency),
                       run_config=tune.RunConfig(name=f"{study}-{int(time.time())}",
                                                 storage_path=str(request.run.run_dir / "tune"),
                                                 callbacks=[recorder], verbose=0))
    try:
        tuner.fit()
    finally:
        recorder.finish()
    return recorded
