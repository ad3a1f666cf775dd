"""The platform flags (--tracking-uri, --artifact-root, --address, --s3-endpoint, --create-bucket) turned into
checked settings."""
from __future__ import annotations

from orchestrator.runtime.settings import (TRACKING_PATIENCE, check_ray_address, check_s3_endpoint, check_tracking_uri,
                                           open_artifact_store, resolve_settings)


def settings_from_args(args, *, read_only: bool = False):
    """Every target checked, cheapest first, before anything is created: a bad one is one line and leaves no
    file behind. `read_only` verbs (status, pareto, retrain) need a tracking store that a search has made."""
    run = resolve_settings(tracking_uri=args.tracking_uri, artifact_root=args.artifact_root, address=args.address,
                           s3_endpoint=args.s3_endpoint, create_bucket=args.create_bucket,
                           tracking_patience=getattr(args, "tracking_patience", None) or TRACKING_PATIENCE)
    check_tracking_uri(run.tracking_uri, must_exist=read_only)
    if run.storage.is_s3:
        check_s3_endpoint(run.storage.resolved_endpoint())
    check_ray_address(run.ray_address)
    run_store = open_artifact_store(run)
    return run, run_store
