"""A search against a tracking server that goes away: the cases a team meets, timed in one run.

With a real `mlflow server` (on sqlite, or on a real PostgreSQL whose database is stopped under the live server with
`--backend postgresql`), a smoke search of `--trials` trials on car q10 at 2 GMACs:
1. undisturbed: its wall time W;
2. the server (or its database) stopped `--after` seconds in (or when the first trial run appears), back
   `--outage` seconds later: how many trials finished while it was away, exit status, wall
   time against the target `outage + 1.5 W`, the runs' statuses, the lines the search said;
3. stopped `--after` seconds in and never back, with `--tracking-patience --patience`: exit status (75 expected),
   seconds from the stop to the exit (target: at most 150 with a patience of 60), the last line; then, with the
   server back, `acla-orch resume --last`: its exit status and whether any run is left RUNNING.

Prints one JSON object per case, and a summary. The server runs in its own process group and is stopped as a
group; PostgreSQL is stopped by its PID. Nothing is left running.

Usage: python benchmarks/tracking_outage.py [--backend sqlite|postgresql] [--trials 6] [--after 20|first-trial]
       [--outage 300] [--patience 60] [--cases undisturbed,back,never]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.pgserver import PostgresServer, _as_postgres  # noqa: E402  (the test suite's real servers)
from tests.test_tracking_server_outage import MlflowServer, first_trial_run, runs_by_kind, trial_runs  # noqa: E402


def acla(run_dir: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "ACLA_HOME": run_dir, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *args], env=env, cwd=run_dir,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def statuses(uri: str) -> dict:
    counts: dict[str, int] = {}
    for runs in runs_by_kind(uri).values():
        for run in runs:
            counts[run.info.status] = counts.get(run.info.status, 0) + 1
    return counts


def finished_trials(run_dir: str) -> int:
    """How many of the search's trials its state holds as finished."""
    from orchestrator.search.state import SearchState
    state = SearchState(run_dir)
    return sum(t["state"] == "finished" for s in state.searches() for t in state.trials(s["parent_run_id"]))


def said(err: str) -> list[str]:
    return [line for line in err.splitlines() if "tracking server" in line or "resume" in line]


def run_case(case: str, args, stop, start, uri: str) -> dict:
    run_dir = tempfile.mkdtemp(prefix="acla-out-")
    search = ["search", "--budget", "2G", "--task", "car", "--profile", "smoke", "--trials", str(args.trials),
              "--json", "--tracking-uri", uri]
    if case == "never":
        search += ["--tracking-patience", str(args.patience)]
    before = trial_runs(uri)
    began = time.time()
    driver = acla(run_dir, *search)
    stopped = None
    if case != "undisturbed":
        if args.after == "first-trial":
            first_trial_run(uri, before)  # this search's trials are under way
        else:
            time.sleep(float(args.after))
        at_stop = finished_trials(run_dir)
        stop()
        stopped = time.time()
        if case == "back":
            time.sleep(args.outage)
            finished_while_away = finished_trials(run_dir) - at_stop  # kept in the search state meanwhile
            start()
    out, err = driver.communicate()
    ended = time.time()
    report = {"case": case, "exit": driver.returncode, "wall_s": round(ended - began, 1), "runs": statuses(uri)
              if case != "never" else None, "traceback": "Traceback" in err, "said": said(err)}
    if case == "back":
        report["trials_finished_while_away"] = finished_while_away
    if case == "never":
        report["stop_to_exit_s"] = round(ended - stopped, 1)
        report["last_line"] = err.strip().splitlines()[-1] if err.strip() else ""
        start()
        resumed = acla(run_dir, "resume", "--last", "--json")
        _, resume_err = resumed.communicate()
        report.update(resume_exit=resumed.returncode, runs=statuses(uri), resume_said=said(resume_err),
                      resume_traceback="Traceback" in resume_err)
    shutil.rmtree(run_dir, ignore_errors=True)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--after", default="20", help="seconds into the search, or `first-trial`: when the search's "
                                                         "first trial run appears on the server")
    parser.add_argument("--outage", type=float, default=300.0)
    parser.add_argument("--patience", type=int, default=60)
    parser.add_argument("--cases", default="undisturbed,back,never")
    args = parser.parse_args()
    database = None
    if args.backend == "postgresql":
        database = PostgresServer().start()
        backend = database.create_database("mlflow")
        options = f"-p {database.port} -k {database.folder} -c listen_addresses=127.0.0.1"
    else:
        backend = None  # sqlite in the server's own folder
    server = MlflowServer(backend).start()

    def stop():
        if database is None:
            server.stop()
        else:
            subprocess.run(_as_postgres(["pg_ctl", "-D", str(database.data), "-m", "immediate", "stop"]), check=True,
                           capture_output=True, timeout=60)

    def start():
        if database is None:
            server.start()
        else:
            subprocess.run(_as_postgres(["pg_ctl", "-D", str(database.data), "-o", options, "-l",
                                         str(database.folder / "log"), "-w", "-t", "60", "start"]), check=True,
                           capture_output=True, timeout=90)
            database.pid = int((database.data / "postmaster.pid").read_text().split()[0])
    reports = []
    try:
        for case in args.cases.split(","):
            reports.append(run_case(case, args, stop, start, server.uri))
            print(json.dumps(reports[-1]), flush=True)
    finally:
        server.close()
        if database is not None:
            database.stop()
    by_case = {r["case"]: r for r in reports}
    if "undisturbed" in by_case and "back" in by_case:
        target = args.outage + 1.5 * by_case["undisturbed"]["wall_s"]
        print(f"away {args.outage:.0f} s and back: wall {by_case['back']['wall_s']} s against at most {target:.0f} s "
              f"(outage + 1.5 x undisturbed {by_case['undisturbed']['wall_s']} s), exit {by_case['back']['exit']}")
    if "never" in by_case:
        never = by_case["never"]
        print(f"never back, patience {args.patience} s: exit {never['exit']} after {never['stop_to_exit_s']} s from "
              f"the stop (target at most 150 s); resume: exit {never['resume_exit']}, runs {never['runs']}")


if __name__ == "__main__":
    main()
