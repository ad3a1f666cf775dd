"""The orchestrator's own record of each search, so that a crash loses nothing: `<run dir>/searches.db`.

SQLite (the standard library's), one transaction per change, WAL journal: a search killed at any point leaves
the last committed state. One row per search (its parent MLflow run id, the request that `resume` replays, the
driver's host and pid, its status), one per trial (the Tune trial id, its config, seed, attempts, state: running,
finished or failed; the MLflow run id and the result once finished), one per finished retrain (its outcome), and
one per progress report of a trial that its tracking server never took (the search gave up waiting for it), in
order, until `resume` sends it.

A search whose status is `running` but whose driver is gone (same host, pid not alive) is `interrupted`;
`acla-orch resume` continues it.
"""
from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from contextlib import closing
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS searches (
    parent_run_id TEXT PRIMARY KEY, experiment_id TEXT NOT NULL, request TEXT NOT NULL, status TEXT NOT NULL,
    host TEXT NOT NULL, pid INTEGER NOT NULL, started REAL NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS trials (
    parent_run_id TEXT NOT NULL, trial_id TEXT NOT NULL, config TEXT NOT NULL, seed INTEGER NOT NULL,
    state TEXT NOT NULL, mlflow_run_id TEXT, result TEXT, error TEXT, artifact_uri TEXT, started REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 1, PRIMARY KEY (parent_run_id, trial_id));
CREATE TABLE IF NOT EXISTS progress (
    parent_run_id TEXT NOT NULL, trial_id TEXT NOT NULL, report TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS retrains (
    parent_run_id TEXT NOT NULL, trial_run_id TEXT NOT NULL, outcome TEXT NOT NULL,
    PRIMARY KEY (parent_run_id, trial_run_id));
"""

STATUSES = ("running", "finished", "failed", "killed", "interrupted")  # interrupted: stopped for `resume`


class SearchState:
    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / "searches.db"

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, timeout=30, isolation_level=None)  # explicit transactions below
        connection.execute("PRAGMA journal_mode=WAL")
        connection.executescript(SCHEMA)
        return connection

    def _write(self, sql: str, values: tuple) -> None:
        with closing(self._connect()) as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute(sql, values)
            db.execute("COMMIT")

    def _read(self, sql: str, values: tuple = ()) -> list[sqlite3.Row]:
        if not self.path.exists():
            return []
        with closing(self._connect()) as db:
            db.row_factory = sqlite3.Row
            return db.execute(sql, values).fetchall()

    # searches
    def begin(self, parent_run_id: str, experiment_id: str, request: dict) -> None:
        """A new search, or a resumed one taken over by this process."""
        now = time.time()
        self._write("INSERT INTO searches VALUES (?, ?, ?, 'running', ?, ?, ?, ?) ON CONFLICT(parent_run_id) DO "
                    "UPDATE SET status='running', host=excluded.host, pid=excluded.pid, updated=excluded.updated",
                    (parent_run_id, experiment_id, json.dumps(request), socket.gethostname(), os.getpid(), now, now))

    def end(self, parent_run_id: str, status: str) -> None:
        assert status in STATUSES
        self._write("UPDATE searches SET status=?, updated=? WHERE parent_run_id=?", (status, time.time(), parent_run_id))

    def search(self, parent_run_id: str) -> dict | None:
        rows = self._read("SELECT * FROM searches WHERE parent_run_id=?", (parent_run_id,))
        return self._search_row(rows[0]) if rows else None

    def searches(self) -> list[dict]:
        return [self._search_row(row) for row in self._read("SELECT * FROM searches ORDER BY started")]

    @staticmethod
    def _search_row(row: sqlite3.Row) -> dict:
        record = dict(row)
        record["request"] = json.loads(record["request"])
        if record["status"] == "running" and not driver_alive(record["host"], record["pid"]):
            record["status"] = "interrupted"
        return record

    # trials
    def trial_started(self, parent_run_id: str, trial_id: str, config: dict, seed: int) -> None:
        """A trial starts, or starts again after its worker died (Tune's retry): `attempts` counts them."""
        self._write("INSERT INTO trials (parent_run_id, trial_id, config, seed, state, started) "
                    "VALUES (?, ?, ?, ?, 'running', ?) ON CONFLICT(parent_run_id, trial_id) DO UPDATE SET "
                    "state='running', attempts=attempts+1",
                    (parent_run_id, trial_id, json.dumps(config), seed, time.time()))

    def trial_finished(self, parent_run_id: str, trial_id: str, result: dict) -> None:
        """A trial's result, kept here first: its MLflow record follows (`trial_recorded`) when the tracking
        server takes it. A finished trial without an artifact URI has a record still to send."""
        self._write("UPDATE trials SET state='finished', result=? WHERE parent_run_id=? AND trial_id=?",
                    (json.dumps(result), parent_run_id, trial_id))

    def trial_run(self, parent_run_id: str, trial_id: str, mlflow_run_id: str) -> None:
        """The trial's MLflow run, once the tracking server has made it."""
        self._write("UPDATE trials SET mlflow_run_id=? WHERE parent_run_id=? AND trial_id=?",
                    (mlflow_run_id, parent_run_id, trial_id))

    def trial_recorded(self, parent_run_id: str, trial_id: str, mlflow_run_id: str, artifact_uri: str) -> None:
        """The trial's result is in MLflow, its artifacts under `artifact_uri`."""
        self._write("UPDATE trials SET mlflow_run_id=?, artifact_uri=? WHERE parent_run_id=? AND trial_id=?",
                    (mlflow_run_id, artifact_uri, parent_run_id, trial_id))

    def trial_failed(self, parent_run_id: str, trial_id: str, error: str) -> None:
        self._write("UPDATE trials SET state='failed', error=? WHERE parent_run_id=? AND trial_id=?",
                    (error[:4000], parent_run_id, trial_id))

    def unsent(self, parent_run_id: str) -> list[dict]:
        """The finished trials whose MLflow record waits (the tracking server was away when they ended)."""
        return [t for t in self.trials(parent_run_id) if t["state"] == "finished" and not t["artifact_uri"]]

    def trial_interrupted(self, parent_run_id: str, trial_id: str) -> None:
        self._write("UPDATE trials SET state='interrupted' WHERE parent_run_id=? AND trial_id=?",
                    (parent_run_id, trial_id))

    def trials(self, parent_run_id: str) -> list[dict]:
        rows = self._read("SELECT * FROM trials WHERE parent_run_id=? ORDER BY started", (parent_run_id,))
        return [{**dict(row), "config": json.loads(row["config"]),
                 "result": json.loads(row["result"]) if row["result"] else None} for row in rows]

    def progress_waiting(self, parent_run_id: str, reports: list[tuple[str, dict]]) -> None:
        """Progress reports ((trial id, report), in order) that the tracking server never took, kept for `resume`."""
        with closing(self._connect()) as db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT INTO progress VALUES (?, ?, ?)",
                           [(parent_run_id, trial_id, json.dumps(report)) for trial_id, report in reports])
            db.execute("COMMIT")

    def waiting_progress(self, parent_run_id: str) -> dict[str, list[dict]]:
        """{trial id: its reports that wait, in order}."""
        rows = self._read("SELECT trial_id, report FROM progress WHERE parent_run_id=? ORDER BY rowid", (parent_run_id,))
        waiting: dict[str, list[dict]] = {}
        for row in rows:
            waiting.setdefault(row["trial_id"], []).append(json.loads(row["report"]))
        return waiting

    def progress_sent(self, parent_run_id: str, trial_id: str) -> None:
        self._write("DELETE FROM progress WHERE parent_run_id=? AND trial_id=?", (parent_run_id, trial_id))

    # retrains
    def retrain_finished(self, parent_run_id: str, trial_run_id: str, outcome: dict) -> None:
        self._write("INSERT OR REPLACE INTO retrains VALUES (?, ?, ?)", (parent_run_id, trial_run_id, json.dumps(outcome)))

    def retrains(self, parent_run_id: str) -> dict[str, dict]:
        rows = self._read("SELECT * FROM retrains WHERE parent_run_id=?", (parent_run_id,))
        return {row["trial_run_id"]: json.loads(row["outcome"]) for row in rows}


def driver_alive(host: str, pid: int) -> bool:
    """Whether the process that ran a search still runs; a search from another host is taken as alive."""
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def resume_plan(state, parent_id: str):
    """What the search already has, from its state: finished trials as recorded, and the configs still owed:
    those of trials cut off (running when the driver died, or interrupted before and never run to an end since),
    each once."""
    from orchestrator.search.driver import ResumePlan
    from orchestrator.runtime.records import TrialRecord
    trials = state.trials(parent_id)
    ended = {json.dumps(t["config"], sort_keys=True) for t in trials if t["state"] in ("finished", "failed")}
    recorded, owed = [], {}
    for trial in trials:
        if trial["state"] == "finished":
            recorded.append(TrialRecord(trial=trial["trial_id"], run_id=trial["mlflow_run_id"], params=trial["config"],
                                        result=trial["result"], artifact_uri=trial["artifact_uri"]))
        elif trial["state"] in ("running", "interrupted"):
            if trial["state"] == "running":
                state.trial_interrupted(parent_id, trial["trial_id"])
            key = json.dumps(trial["config"], sort_keys=True)
            if key not in ended:
                owed.setdefault(key, trial["config"])
    done = sum(1 for t in trials if t["state"] in ("finished", "failed"))
    return ResumePlan(recorded=recorded, done=done, interrupted=list(owed.values()))
