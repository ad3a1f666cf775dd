"""Starting or joining Ray for a search, an ablation or a retraining: a local Ray kept on loopback with a
per-run token and its files under the run directory, or a cluster joined with its token; always shut down."""
from __future__ import annotations

import hashlib
import os
import secrets
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from orchestrator.runtime.errors import UsageError, install_signal_handlers
from orchestrator.runtime.settings import RunSettings


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


def no_preemption_watcher() -> None:
    """Ray Train starts a preemption watcher beside every worker group: an actor that polls for the drain
    notices a cloud sends before it takes back a spot node. A local Ray is this one machine, which nothing
    preempts, and the actor cost each retraining 2.3 CPU-seconds (of 31, measured per process at the smoke
    profile) for nothing. Unless the user set it, a local session does without it; a cluster keeps Ray's default."""
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")


def ray_params_defaults(**values) -> None:
    """Set defaults of RayParams, which builds a local node's parameters, for settings `ray.init` does not pass
    through; a Ray whose RayParams lacks one of them keeps its own behaviour for it."""
    from ray._private.parameter import RayParams
    init = RayParams.__init__
    defaults, code = list(init.__defaults__ or ()), init.__code__
    names = code.co_varnames[code.co_argcount - len(defaults):code.co_argcount]
    for name, value in values.items():
        if name in names:
            defaults[names.index(name)] = value
    init.__defaults__ = tuple(defaults)


def agent_port_of_its_own() -> None:
    """Give the local Ray's dashboard agent a free HTTP port instead of Ray's fixed 52365.

    Ray 2.60 with ray[default] starts a dashboard agent beside every local raylet, even without the dashboard, and
    the raylet waits for it. Where another Ray already holds 52365 (a second search on the machine, the test beside
    this one), the agent retries for 3.3 s and then goes on without its HTTP server: `ray.init` took 8.4 s instead
    of 3.4. `ray.init` has no setting for this port, so it goes in as the default of RayParams, which builds the
    node's parameters; a Ray without that parameter keeps its own default."""
    import socket
    with socket.socket() as probe:  # a port free now; the agent binds it a second later
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ray_params_defaults(dashboard_agent_listen_port=port)


def no_monitors() -> None:
    """A local Ray without its log monitor and its autoscaler monitor. The log monitor streams the workers' output
    to the driver, which a search turns off (`log_to_driver=False`: the trials report through Tune, and their
    logs stay under the run directory); the autoscaler monitor scales a cluster that here is one fixed machine.
    Each is a Python process importing Ray; without them a smoke sweep (2 budgets x 2 trials, `--no-width`)
    took 47.3 and 45.7 CPU-seconds against 61.0 and 54.6 with them, in the same session, measured in a cgroup.
    Like the agent's port, they go in as RayParams defaults; ray.init has no setting for them."""
    ray_params_defaults(include_log_monitor=False, no_monitor=True)


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


STARTED_HERE = {"local": False}  # whether the Ray of this process's session is one it started (and ends)


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
        no_preemption_watcher()
        no_monitors()
        ray.init(num_cpus=os.cpu_count(), _temp_dir=str(ray_temp_dir(run.run_dir)), **kwargs)
        STARTED_HERE["local"] = True
    else:
        join_cluster(ray, run.ray_address, kwargs)
    # ray.init installs a C++ failure handler for SIGTERM that dumps a stack and aborts (exit 134); put back
    # the ones that cancel cleanly (runs KILLED, Ray shut down, exit 143 or 130).
    install_signal_handlers()
    try:
        yield ray
    finally:
        STARTED_HERE["local"] = False
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
