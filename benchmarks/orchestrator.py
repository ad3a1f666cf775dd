"""Orchestrator cost, as JSON: the wall time of `acla-orch search --budget 50GFLOPs --task car` (smoke, and quick
with --full), and the overhead of one quick trial run through Ray Tune + Optuna + MLflow against the same
trial function called directly with the same parameters, in the same run. With --sweep, P9 instead:
a sweep of 4 budgets on one shared supernet against one single-budget search, with the same flags and profile.
Usage: python benchmarks/orchestrator.py [--full] [--profile quick] | --sweep [--profile quick]"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# This script is itself named orchestrator.py: put the project root, not benchmarks/, first on the path.
sys.path[:] = [ROOT] + [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]


SWEEP_BUDGETS = "13G,25G,50G,100G"  # GMACs; the single search is the README's 50GFLOPs = 25 GMACs, one of them


def search(home: str, *args: str, verb: tuple[str, ...] = ("search", "--budget", "50GFLOPs")) -> tuple[float, dict]:
    env = {**os.environ, "ACLA_HOME": home, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": ROOT}
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "orchestrator.cli", *verb, "--task", "car", "--json", *args], env=env,
                         capture_output=True, text=True)
    wall = time.perf_counter() - started
    if out.returncode:
        raise SystemExit(out.stderr[-2000:])
    return wall, json.loads(out.stdout)


def direct_trial(home: str, summary: dict, profile_name: str) -> tuple[float, float]:
    import torch
    from mlflow.tracking import MlflowClient

    from orchestrator.search.trial import TrialSettings, run_trial
    from workers.data import embedded_sets
    from workers.profiles import get_profile
    from workers.tasks import task_from_options
    from workers.train import DataSpec

    run = MlflowClient(f"sqlite:///{home}/mlflow.db").get_run(summary["trials"][0]["run_id"])
    params, in_ray = run.data.params, run.data.metrics["trial_seconds"]
    config = {"backbone": params["backbone"], **{k: float(params[k]) for k in
                                                 ("penalty_weight", "weight_lr", "arch_lr", "gate_temperature")}}
    settings = TrialSettings(task=task_from_options("car"), budget_macs=50e9, profile=get_profile(profile_name),
                             data=DataSpec(*embedded_sets()))
    torch.set_num_threads(os.cpu_count() or 1)  # what Ray grants a lone trial
    started = time.perf_counter()
    run_trial(config, settings)
    return time.perf_counter() - started, in_ray


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--full", action="store_true", help="also time the full quick-profile search (minutes)")
    parser.add_argument("--profile", default="quick", help="profile of the overhead trial (or of P9)")
    parser.add_argument("--sweep", action="store_true", help=f"P9: sweep {SWEEP_BUDGETS} against one search")
    args = parser.parse_args()
    if args.sweep:
        return sweep_cost(args.profile)
    results = {"cpus": os.cpu_count()}
    home = tempfile.mkdtemp(prefix="acla-b-")
    try:
        results["smoke_search_s"] = round(search(home, "--profile", "smoke")[0], 1)
        print(json.dumps(results), file=sys.stderr, flush=True)  # partial figures survive a later failure
        if args.full:
            results["quick_search_s"] = round(search(home, "--profile", "quick")[0], 1)
            print(json.dumps(results), file=sys.stderr, flush=True)
        shutil.rmtree(home)
        home = tempfile.mkdtemp(prefix="acla-b-")
        orchestrated, summary = search(home, "--profile", args.profile, "--trials", "1", "--concurrency", "1",
                                       "--no-retrain")
        direct, in_ray = direct_trial(home, summary, args.profile)
        # Two views: the trial as a Ray Tune trial against the direct call (the per-trial overhead), and a whole
        # one-trial `acla-orch search` (process start, Ray start, MLflow, Optuna) against the direct call.
        results.update({"overhead_profile": args.profile, "one_trial_direct_s": round(direct, 1),
                        "one_trial_in_ray_tune_s": round(in_ray, 1),
                        "trial_overhead_ratio": round(in_ray / direct, 3),
                        "one_trial_search_wall_s": round(orchestrated, 1),
                        "whole_search_over_direct": round(orchestrated / direct, 3)})
    finally:
        shutil.rmtree(home, ignore_errors=True)
    print(json.dumps(results, indent=2))


def sweep_breakdown(home: str, summary: dict) -> dict:
    """Where the sweep's time went, from its MLflow runs: the supernet's training; the one Tune run of every
    budget's trials (from the first trial's start to the last one's end); what followed it (the width nets,
    trained at once, each budget's front and records); and each budget's trials (summed, though two run at a
    time) and width net."""
    from mlflow.tracking import MlflowClient
    client = MlflowClient(f"sqlite:///{home}/mlflow.db")
    first = client.get_run(summary["searches"][0]["parent_run_id"]).data.tags
    budgets, spans, parents_end = {}, [], 0
    for search in summary["searches"]:
        runs = [client.get_run(t["run_id"]) for t in search["trials"]]
        spans += [(run.info.start_time, run.info.end_time) for run in runs]
        width = search.get("width") or {}
        width_seconds = client.get_run(width["run_id"]).data.metrics.get("seconds") if width.get("run_id") else None
        parents_end = max(parents_end, client.get_run(search["parent_run_id"]).info.end_time)
        budgets[f"{search['budget_macs'] / 1e9:g}G"] = {
            "trials_s_summed": round(sum(run.data.metrics.get("trial_seconds", 0.0) for run in runs), 1),
            "width_s": None if width_seconds is None else round(width_seconds, 1)}
    trials_end = max(end for _, end in spans)
    return {"shared_supernet_s": float(first.get("shared_supernet_seconds", "nan")),
            "trials_wall_s": round((trials_end - min(start for start, _ in spans)) / 1e3, 1),
            "after_trials_s": round((parents_end - trials_end) / 1e3, 1), "per_budget": budgets}


def sweep_cost(profile: str) -> None:
    """P9: the wall time of a 4-budget sweep (one shared supernet) over that of one search, same flags (retraining
    off: a sweep retrains each budget's winners, a search one budget's; the width line on, as by default)."""
    flags = ("--profile", profile, "--no-retrain")
    results = {"cpus": os.cpu_count(), "profile": profile, "sweep_budgets": SWEEP_BUDGETS, "search_budget": "25G"}
    home = tempfile.mkdtemp(prefix="acla-b-")
    try:
        results["search_s"] = round(search(home, *flags, verb=("search", "--budget", "25G"))[0], 1)
        print(json.dumps(results), file=sys.stderr, flush=True)
        shutil.rmtree(home)
        home = tempfile.mkdtemp(prefix="acla-b-")
        wall, summary = search(home, *flags, verb=("sweep", "--budgets", SWEEP_BUDGETS))
        results["sweep_s"] = round(wall, 1)
        results["sweep_over_search"] = round(wall / results["search_s"], 2)
        results["sweep_trials"] = sum(len(s["trials"]) for s in summary["searches"])
        results.update(sweep_breakdown(home, summary))
    finally:
        shutil.rmtree(home, ignore_errors=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
