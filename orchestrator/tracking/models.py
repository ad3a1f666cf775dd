"""One resolver for every verb that takes a trained model (`restore`, `evaluate`): a reference becomes a local
checkpoint file, and the MLflow run it came from when there is one.

Accepted references:
- a checkpoint path (`model.pt`, written by `train`, `search` or `retrain`), or a `file://` URI;
- an `s3://bucket/key` URI of a checkpoint, or of a model set (`.../models/acla-car-q10/v1`, holding model.pt);
- an MLflow run id (32 hex digits) of a retrain run, whose `checkpoint/` artifact is read;
- a registry reference, `models:/NAME@ALIAS` or `models:/NAME/VERSION`, read through its version's run.
"""
from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from orchestrator.runtime.errors import UsageError

CHECKPOINT_FILE = "model.pt"  # as orchestrator/retrain/ray_train.py names it
RUN_ID = re.compile(r"[0-9a-f]{32}")
REGISTRY = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))")
EXPECTED = ("expected a checkpoint path, a file:// or s3:// URI, an MLflow run id (32 hex digits) or "
            "models:/NAME@ALIAS (or models:/NAME/VERSION)")


@dataclass(frozen=True)
class ResolvedModel:
    reference: str  # as the user gave it
    checkpoint: str  # a local file
    run_id: str | None  # the MLflow run that holds the model, where it came from MLflow
    tracking_uri: str | None


def needs_tracking(reference: str) -> bool:
    """Whether the reference is read through MLflow (a registry reference, or a run id that is not a file); a
    malformed registry reference is refused here, before any store is opened."""
    if reference.startswith("models:/") and not REGISTRY.fullmatch(reference):
        raise UsageError(f"unknown model reference {reference!r}; {EXPECTED}")
    return reference.startswith("models:/") or (RUN_ID.fullmatch(reference) is not None and not Path(reference).exists())


def resolve_model(reference: str, *, tracking_uri: str, s3_endpoint: str | None = None,
                  workdir: str | None = None) -> ResolvedModel:
    """The local checkpoint of `reference`; UsageError (one line) when it names nothing we can read."""
    workdir = workdir or tempfile.mkdtemp(prefix="acla-model-")
    if reference.startswith("models:/"):
        return _from_registry(reference, tracking_uri, workdir)
    if reference.startswith("s3://"):
        return ResolvedModel(reference, _from_s3(reference, s3_endpoint, workdir), None, None)
    if reference.startswith("file://"):
        path = Path(urlparse(reference).path)
    else:
        path = Path(reference)
    if path.is_file():
        return ResolvedModel(reference, str(path), None, None)
    if path.is_dir() and (path / CHECKPOINT_FILE).is_file():
        return ResolvedModel(reference, str(path / CHECKPOINT_FILE), None, None)
    if RUN_ID.fullmatch(reference):
        return _from_run(reference, reference, tracking_uri, workdir)
    raise UsageError(f"unknown model reference {reference!r}: no such file; {EXPECTED}")


def _from_registry(reference: str, tracking_uri: str, workdir: str) -> ResolvedModel:
    match = REGISTRY.fullmatch(reference)
    if not match:
        raise UsageError(f"unknown model reference {reference!r}; {EXPECTED}")
    from orchestrator.tracking.runs import client_for
    client = client_for(tracking_uri)
    try:
        if match["alias"]:
            version = client.get_model_version_by_alias(match["name"], match["alias"])
        else:
            version = client.get_model_version(match["name"], match["version"])
    except Exception:
        raise UsageError(f"unknown model reference {reference!r}: no such registered model version at "
                         f"{tracking_uri}; `acla-orch status` lists the searches") from None
    return _from_run(reference, version.run_id, tracking_uri, workdir)


def _from_run(reference: str, run_id: str, tracking_uri: str, workdir: str) -> ResolvedModel:
    import mlflow

    from orchestrator.tracking.runs import client_for
    client = client_for(tracking_uri)
    try:
        run = client.get_run(run_id)
    except Exception:
        raise UsageError(f"unknown model reference {reference!r}: no MLflow run {run_id} at {tracking_uri}") from None
    if run.data.tags.get("acla_kind") == "trial":
        raise UsageError(f"run {run_id} is a search trial, which keeps no trained weights; retrain it "
                         f"(acla-orch retrain --run-id {run_id}) and pass the retrain's run or its models:/ alias")
    try:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"checkpoint/{CHECKPOINT_FILE}",
                                                   tracking_uri=tracking_uri, dst_path=workdir)
    except Exception:
        raise UsageError(f"run {run_id} has no checkpoint/{CHECKPOINT_FILE} artifact; expected a retrain run") from None
    return ResolvedModel(reference, path, run_id, tracking_uri)


def _from_s3(reference: str, endpoint: str | None, workdir: str) -> str:
    from storage.stores import S3Store, StorageConfig, StorageError
    parsed = urlparse(reference)
    key = parsed.path.strip("/")
    store = S3Store(StorageConfig(f"s3://{parsed.netloc}", endpoint=endpoint))
    target = str(Path(workdir) / CHECKPOINT_FILE)
    for candidate in (key, f"{key}/{CHECKPOINT_FILE}"):
        try:
            if candidate and store.exists(candidate):
                store.get(candidate, target)
                return target
        except StorageError as err:
            raise UsageError(f"model {reference}: {err}") from None
    raise UsageError(f"unknown model reference {reference!r}: no object {key} (nor {key}/{CHECKPOINT_FILE}) in the bucket")
