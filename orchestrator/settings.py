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
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from .errors import UsageError


@dataclass(frozen=True)
class RunSettings:
    run_dir: Path
    tracking_uri: str
    artifact_root: str
    ray_address: str | None
    s3_endpoint: str | None = None
    create_bucket: bool = False

    @property
    def storage(self):
        from storage.stores import StorageConfig
        return StorageConfig(self.artifact_root, endpoint=self.s3_endpoint, create_bucket=self.create_bucket)


def resolve_settings(*, tracking_uri: str | None, artifact_root: str | None, address: str | None,
                     s3_endpoint: str | None = None, create_bucket: bool = False) -> RunSettings:
    run_dir = Path(os.environ.get("ACLA_HOME") or "acla-runs").absolute()
    tracking = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{run_dir / 'mlflow.db'}"
    artifacts = artifact_root or str(run_dir / "artifacts")
    return RunSettings(run_dir=run_dir, tracking_uri=tracking, artifact_root=artifacts,
                       ray_address=address or os.environ.get("RAY_ADDRESS") or None, s3_endpoint=s3_endpoint,
                       create_bucket=create_bucket)


def check_tracking_uri(uri: str) -> None:
    """Fail fast, naming the URI, when MLflow's tracking store cannot be reached."""
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
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UsageError(f"cannot create the MLflow database folder {path.parent}: {err.strerror}") from None
        if not os.access(path.parent, os.W_OK):
            raise UsageError(f"MLflow database folder {path.parent} is not writable")
    elif parsed.scheme in ("postgresql", "mysql", "mssql", "databricks"):
        return
    else:
        raise UsageError(f"tracking URI {uri!r} is not supported; expected http(s)://HOST:PORT or sqlite:///PATH")


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
    if not parsed.hostname or not parsed.port:
        raise UsageError(f"Ray address {address!r} is not valid; expected HOST:PORT, ray://HOST:PORT or auto")
    try:
        with socket.create_connection((parsed.hostname, parsed.port), timeout=3):
            pass
    except OSError as err:
        raise UsageError(f"Ray is not reachable at {address} ({err.strerror or err}); start the cluster or fix --address") from None
