"""A search's front and width line from its own records, never a read-back from the tracking server.

The front spans the experiment: this search's finished trials (their results as the trials reported them, kept in
the search state first) and the earlier searches' rows of the experiment's trial table in the artifact store
(storage/trial_table.py), which every search appends to. The width line is this search's width points and the
earlier ones recorded beside the table. What MLflow shows follows as writes: each run's `pareto` tag where its
flag changed, the front's table and plot on the parent. So the winners, the registered model and the summary rest
on what the search itself measured, and a tracking server that lost or never got a record cannot change them.
The front covers the searches recorded in this artifact store (a search pointed at another store is not on it).
"""
from __future__ import annotations

import json

from orchestrator.runtime.records import TRIAL_METRICS, TrialRecord
from orchestrator.tracking.pareto import pareto_front

TABLE_ONLY = ("genotype_uri", "artifact_uri")  # the table's columns that are not a front row's


def trial_rows(parent_id: str, budget: float, recorded: list[TrialRecord]) -> list[dict]:
    """This search's finished trials as front rows (the same fields as the trial table's)."""
    from orchestrator.tracking.runs import short_genotype_params
    rows = []
    for item in recorded:
        short = short_genotype_params(json.loads(item.result["genotype"]))
        rows.append({"run_id": item.run_id, "trial_id": item.trial, "search_run_id": parent_id,
                     "budget_macs": float(budget), "backbone": str(item.params.get("backbone", "")),
                     "net": short["net"], "positions": short["positions"], "keys": short["keys"],
                     **{k: float(item.result[k]) for k in TRIAL_METRICS if item.result.get(k) is not None}})
    return rows


def search_front(store, experiment: str, mine: list[dict]) -> tuple[list[dict], dict[str, bool | None]]:
    """(rows, flags before): the earlier searches' rows from the trial table and `mine` (every budget of this job),
    each with `pareto` set over them all; and each row's flag as it was recorded before (None for this job's)."""
    from storage.trial_table import read_trials
    parents = {row["search_run_id"] for row in mine}
    earlier = [{k: v for k, v in row.items() if k not in TABLE_ONLY}
               for row in read_trials(store, experiment, missing_ok=True).to_pylist()
               if row.get("search_run_id") not in parents and row.get("psnr") is not None
               and row.get("macs") is not None]
    before = {row["run_id"]: bool(row["pareto"]) if row.get("pareto") is not None else None for row in earlier}
    rows = earlier + [dict(row) for row in mine]
    for row, flag in zip(rows, pareto_front([(row["psnr"], row["macs"]) for row in rows])):
        row["pareto"] = flag
    return rows, before


def tag_front(client, rows: list[dict], before: dict[str, bool | None]) -> int:
    """Each run's `pareto` tag in MLflow, where its flag is new or changed; returns how many were written."""
    changed = [row for row in rows if before.get(row["run_id"]) != row["pareto"]]
    for row in changed:
        client.set_tag(row["run_id"], "pareto", str(row["pareto"]).lower())
    return len(changed)


def width_line(store, experiment: str, mine: list[dict]) -> list[dict]:
    """The experiment's width line: the latest point per budget, this job's (`mine`) over earlier searches'."""
    from storage.trial_table import read_widths
    parents = {point.get("search_run_id") for point in mine}
    earlier = sorted((p for p in read_widths(store, experiment) if p["search_run_id"] not in parents),
                     key=lambda p: p.get("recorded_at", 0.0))
    latest = {float(p["budget_macs"]): p for p in earlier}
    latest.update({float(p["budget_macs"]): p for p in mine})
    return sorted(latest.values(), key=lambda p: p["macs"])


def record_width_points(store, experiment: str, widths: dict, parents: dict) -> list[dict]:
    """This job's width points ({budget: point}, width.py's) beside the trial table, one part per search (its
    parent run, `parents`: {budget: parent id}); returns them as the width line takes them."""
    import time

    from storage.trial_table import append_width
    from orchestrator.search.width import WIDTH_METRICS
    points = []
    for budget, point in sorted(widths.items()):
        kept = {k: point[k] for k in ("run_id", "backbone", "net", "seconds", *WIDTH_METRICS) if point.get(k) is not None}
        kept.update(budget_macs=float(budget), search_run_id=parents[budget], recorded_at=time.time())
        append_width(store, experiment, parents[budget], [kept])
        points.append(kept)
    return points
