"""Where a run lives and what it talks to, resolved once from flags and environment.

- run directory: `$ACLA_HOME`, else `./acla-runs`.
- MLflow: `--tracking-uri`, else `MLFLOW_TRACKING_URI`, else `sqlite:///<run dir>/mlflow.db`.
- artifacts: `--artifact-root`, else `<run dir>/artifacts`.
- Ray: `--address`, else `RAY_ADDRESS`, else a local instance sized to the machine, its files under
  `<run dir>/ray`.
Every target is checked before any work starts, so an unreachable one costs seconds, not a search.
"""
from __future__ import annotations

import os
import shlex
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from orchestrator.runtime.errors import UsageError


TRACKING_PATIENCE = 600.0  # seconds a search waits for an MLflow server that went away (tracking/outage.py)


@dataclass(frozen=True)
class RunSettings:
    run_dir: Path
    tracking_uri: str
    artifact_root: str
    ray_address: str | None
    s3_endpoint: str | None = None
    create_bucket: bool = False
    tracking_patience: float = TRACKING_PATIENCE

    @property
    def storage(self):
        from storage.stores import StorageConfig
        return StorageConfig(self.artifact_root, endpoint=self.s3_endpoint, create_bucket=self.create_bucket)


def resolve_settings(*, tracking_uri: str | None, artifact_root: str | None, address: str | None,
                     s3_endpoint: str | None = None, create_bucket: bool = False,
                     tracking_patience: float = TRACKING_PATIENCE) -> RunSettings:
    run_dir = Path(os.environ.get("ACLA_HOME") or "acla-runs").absolute()
    tracking = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{run_dir / 'mlflow.db'}"
    artifacts = artifact_root or str(run_dir / "artifacts")
    return RunSettings(run_dir=run_dir, tracking_uri=tracking, artifact_root=artifacts,
                       ray_address=address or os.environ.get("RAY_ADDRESS") or None, s3_endpoint=s3_endpoint,
                       create_bucket=create_bucket, tracking_patience=tracking_patience)


DATABASE_DRIVERS = {  # SQLAlchemy's default driver per scheme, and what to install for it
    # SQLAlchemy 2.1 (MLflow's) reads postgresql:// with psycopg 3, which the postgres extra installs.
    "postgresql": (("psycopg",), "psycopg[binary]"), "postgresql+psycopg2": (("psycopg2",), "psycopg2-binary"),
    "postgresql+psycopg": (("psycopg",), "psycopg[binary]"), "mysql": (("MySQLdb",), "mysqlclient"),
    "mysql+pymysql": (("pymysql",), "pymysql"), "mssql": (("pyodbc",), "pyodbc"), "mssql+pyodbc": (("pyodbc",), "pyodbc"),
}


def redact(uri: str) -> str:
    """The URI with any password replaced, for messages."""
    parsed = urlparse(uri)
    if parsed.password:
        return uri.replace(f":{parsed.password}@", ":***@", 1)
    return uri


def nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_tracking_uri(uri: str, *, must_exist: bool = False) -> None:
    """Fail fast, naming the URI, when MLflow's tracking store cannot be reached or used. Creates nothing.

    `must_exist`: a verb that only reads (status, pareto, retrain) needs a store that a search has made."""
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as response:
                if response.status != 200:
                    raise UsageError(f"MLflow tracking server {uri} answered {response.status} on /health; expected 200")
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise UsageError(f"MLflow tracking server {uri} is not reachable ({reason}); start it or pass "
                             f"another --tracking-uri") from None
    elif parsed.scheme == "sqlite":
        path = Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None
        if path is None or not str(path):
            raise UsageError(f"tracking URI {uri} is not a sqlite file URI; expected sqlite:///PATH/mlflow.db")
        check_sqlite_store(path, must_exist)
    elif parsed.scheme in DATABASE_DRIVERS:
        modules, package = DATABASE_DRIVERS[parsed.scheme]
        import importlib.util
        if not any(importlib.util.find_spec(module) for module in modules):
            raise UsageError(f"tracking URI {redact(uri)} needs the {parsed.scheme} driver, which is not installed; "
                             + ("install the postgres extra (pip install 'acla-orch[postgres]')"
                                if parsed.scheme.startswith("postgresql") else f"pip install {package}"))
        check_database(uri)
    else:
        raise UsageError(f"tracking URI {redact(uri)!r} is not supported; expected http(s)://HOST:PORT, "
                         f"sqlite:///PATH or a database URI such as postgresql://USER@HOST/DB")


def check_database(uri: str) -> None:
    """A database tracking URI answers within a few seconds (MLflow itself would retry for minutes)."""
    import sqlalchemy
    try:
        engine = sqlalchemy.create_engine(uri, connect_args={"connect_timeout": 3})
        with engine.connect():
            pass
        engine.dispose()
    except Exception as err:  # the driver's own error: refused, unknown host, bad password, no such database
        reason = (str(getattr(err, "orig", err)).strip().splitlines() or [err.__class__.__name__])[0][:200]
        raise UsageError(f"tracking database {redact(uri)} is not reachable ({reason}); start it or pass another "
                         f"--tracking-uri") from None


def check_sqlite_store(path: Path, must_exist: bool) -> None:
    if path.exists():
        if not path.is_file():
            raise UsageError(f"MLflow database {path} is not a file")
        with open(path, "rb") as handle:
            header = handle.read(16)
        if header and header != b"SQLite format 3\x00":
            raise UsageError(f"{path} is not an MLflow sqlite database (not a sqlite file); move it aside or pass "
                             f"another --tracking-uri")
        return
    if must_exist:
        raise UsageError(f"no MLflow store at {path}; run a search first, or set ACLA_HOME or --tracking-uri")
    folder = nearest_existing(path.parent)
    if not folder.is_dir():
        raise UsageError(f"{folder} is a file, not a folder; ACLA_HOME (or the --tracking-uri path) must name a "
                         f"folder")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"MLflow database folder {path.parent} is not writable")


def create_sqlite_folder(uri: str) -> None:
    """The folder of a sqlite tracking store, made when the first run is about to be written."""
    if uri.startswith("sqlite:///"):
        folder = Path(uri[len("sqlite:///"):]).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UsageError(f"cannot create the MLflow database folder {folder}: {err.strerror}") from None


def check_s3_endpoint(endpoint: str | None) -> None:
    if endpoint is None:
        return
    parsed = urlparse(endpoint)
    try:
        port_ok = parsed.port is None or 0 < parsed.port
    except ValueError:
        port_ok = False
    if parsed.scheme not in ("http", "https") or not parsed.hostname or not port_ok:
        raise UsageError(f"S3 endpoint {endpoint!r} is not a URL; expected http(s)://HOST[:PORT]")


def open_artifact_store(run: RunSettings):
    """The artifact store, checked now: a malformed URI, a missing bucket, wrong credentials or a silent
    endpoint is one line before any work starts."""
    from storage.stores import StorageError, open_store
    try:
        return open_store(run.storage)
    except StorageError as err:
        raise UsageError(str(err)) from None
    except OSError as err:
        raise UsageError(f"cannot use the artifact root {run.artifact_root}: {err.strerror or err}") from None


def check_ray_address(address: str | None) -> None:
    """`auto`, `local`, `ray://host:port` or `host:port`; a TCP probe catches a wrong host or port at once."""
    if address in (None, "", "auto", "local"):
        return
    parsed = urlparse(address if "://" in address else f"ray://{address}")
    try:
        port = parsed.port
    except ValueError:  # not a number, or outside 0-65535
        port = None
    if not parsed.hostname or not port:
        raise UsageError(f"Ray address {address!r} is not valid; expected HOST:PORT (port 1-65535), "
                         f"ray://HOST:PORT or auto")
    try:
        with socket.create_connection((parsed.hostname, port), timeout=3):
            pass
    except OSError as err:
        raise UsageError(f"Ray is not reachable at {address} ({err.strerror or err}); start the cluster or fix --address") from None


# The flags that say where a search runs (a `resume` may give others).
PLATFORM_KEYS = ("tracking_uri", "artifact_root", "address", "s3_endpoint", "create_bucket")


def redacted_platform(platform: dict) -> dict:
    """Where a search runs, as it is stored: the tracking URI's password out."""
    if platform.get("tracking_uri"):
        return {**platform, "tracking_uri": redact(platform["tracking_uri"])}
    return dict(platform)


def redacted_command(argv: list[str]) -> str:
    """The command line as it was typed, with any password in a URI replaced (it is stored and shown)."""
    def hide(arg: str) -> str:
        flag, equals, value = arg.partition("=") if arg.startswith("--") else ("", "", arg)
        return flag + equals + (redact(value) if "://" in value else value)
    return shlex.join(hide(arg) for arg in argv)
