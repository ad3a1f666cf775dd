"""`acla-orch report`: the flags checked, then the page built from MLflow (orchestrator/analysis/report.py) in a
temporary folder and renamed into place."""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from orchestrator.analysis.report import build_report
from orchestrator.runtime.errors import UsageError


def command_report(args: argparse.Namespace) -> int:
    from orchestrator.cli.platform import settings_from_args
    from orchestrator.cli.local import task_spec_from_args
    from orchestrator.runtime.inputs import user_errors
    from orchestrator.tracking.runs import experiment_name, mlflow_client
    task = task_spec_from_args(args)
    out = Path(args.output or f"report-{task.label}")
    if out.exists():
        raise UsageError(f"{out} already exists; pass -o with a new folder")
    if not out.parent.is_dir():
        raise UsageError(f"{out}: folder {out.parent} does not exist; create it first")
    run, _ = settings_from_args(args, read_only=True)
    client = mlflow_client(run)
    name = experiment_name(task.label)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        raise UsageError(f"no experiment {name} at {run.tracking_uri}; run a search first")
    partial = Path(tempfile.mkdtemp(prefix=".report-", dir=out.parent))
    try:
        with user_errors():
            shown = build_report(client, experiment, task, run.tracking_uri, partial)
        partial.rename(out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    shown["page"] = str(out / "index.html")
    print(json.dumps(shown) if args.json else f"report: {shown['page']}")
    return 0
