"""A search's front and width line from its own records (search/front.py): the earlier searches' rows from the
trial table in a real disk store, this job's trials from their results, the flags against an independent
oracle, and MLflow's `pareto` tags written (on a real sqlite store) only where a flag is new or changed."""
import json

import pyarrow as pa
import pytest

from storage.stores import StorageConfig, open_store
from storage.trial_table import append_trials, append_width, read_trials, read_widths
from orchestrator.runtime.records import TrialRecord
from orchestrator.search.front import record_width_points, search_front, tag_front, trial_rows, width_line
from tests.test_orchestrator import independent_front as oracle_front  # sort by cost, keep each that beats the cheaper


def genotype_json(channels, positions):
    return json.dumps({"attention": "acla", "positions": positions, "keys": [[9]] * len(positions),
                       "channels": channels, "blocks": 8})


def record(trial, run_id, psnr, macs, channels=32, positions=()):
    return TrialRecord(trial=trial, run_id=run_id, params={"backbone": f"c{channels}-b8", "penalty_weight": 1.0},
                       result={"psnr": psnr, "macs": macs, "ssim": 0.9, "psnr_rgb": None,
                               "genotype": genotype_json(channels, list(positions))},
                       artifact_uri="file:///nowhere")


@pytest.fixture
def store(tmp_path):
    return open_store(StorageConfig(str(tmp_path / "store")))


def earlier_part(store, parent, rows):
    columns = ["run_id", "trial_id", "search_run_id", "budget_macs", "backbone", "positions", "keys", "pareto",
               "psnr", "macs", "genotype_uri", "artifact_uri"]
    append_trials(store, "acla-car-q10", parent, pa.table({c: [r.get(c) for r in rows] for c in columns}))


def test_rows_from_the_trials_own_results():
    rows = trial_rows("parent-a", 2e9, [record("t1", "r1", 30.5, 1.9e9, 32, [1, 3])])
    assert rows == [{"run_id": "r1", "trial_id": "t1", "search_run_id": "parent-a", "budget_macs": 2e9,
                     "backbone": "c32-b8", "net": "32x8", "positions": "1,3", "keys": "9|9", "psnr": 30.5,
                     "macs": 1.9e9, "ssim": 0.9}]


def test_front_spans_the_table_and_this_job(store):
    assert search_front(store, "acla-car-q10", []) == ([], {})  # a first search: no table yet, no error
    earlier_part(store, "old", [
        {"run_id": "e1", "search_run_id": "old", "psnr": 30.0, "macs": 1.0e9, "pareto": True, "genotype_uri": "x"},
        {"run_id": "e2", "search_run_id": "old", "psnr": 30.8, "macs": 2.0e9, "pareto": True},
        {"run_id": "e3", "search_run_id": "old", "psnr": 29.0, "macs": 1.5e9, "pareto": False}])
    # a part of this job's own search (written by an earlier try of it) is replaced by its trials, not counted twice
    earlier_part(store, "mine-1", [{"run_id": "stale", "search_run_id": "mine-1", "psnr": 99.0, "macs": 1.0,
                                    "pareto": True}])
    mine = trial_rows("mine-1", 2e9, [record("t1", "m1", 30.9, 1.9e9), record("t2", "m2", 29.5, 0.8e9)]) + \
        trial_rows("mine-2", 1e9, [record("t3", "m3", 30.2, 0.9e9)])
    rows, before = search_front(store, "acla-car-q10", mine)
    assert {r["run_id"] for r in rows} == {"e1", "e2", "e3", "m1", "m2", "m3"}
    assert all("genotype_uri" not in r for r in rows)
    want = oracle_front([(r["run_id"], r["psnr"], r["macs"]) for r in rows])
    assert {r["run_id"] for r in rows if r["pareto"]} == want == {"m2", "m3", "m1"}
    assert before == {"e1": True, "e2": True, "e3": False}


def test_tags_written_where_a_flag_is_new_or_changed(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.tracking import MlflowClient
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("acla-car-q10", artifact_location=str(tmp_path / "artifacts"))
    ids = {name: client.create_run(experiment).info.run_id for name in ("e1", "e2", "m1")}
    client.set_tag(ids["e1"], "pareto", "true")
    client.set_tag(ids["e2"], "pareto", "false")
    rows = [{"run_id": ids["e1"], "pareto": False}, {"run_id": ids["e2"], "pareto": False},
            {"run_id": ids["m1"], "pareto": True}]
    assert tag_front(client, rows, {ids["e1"]: True, ids["e2"]: False}) == 2
    assert {name: client.get_run(i).data.tags["pareto"] for name, i in ids.items()} == \
        {"e1": "false", "e2": "false", "m1": "true"}


def test_width_line_latest_per_budget(store):
    append_width(store, "acla-car-q10", "old-b", [{"budget_macs": 2e9, "macs": 1.9e9, "psnr": 30.1, "recorded_at": 2.0}])
    append_width(store, "acla-car-q10", "old-a", [{"budget_macs": 2e9, "macs": 1.9e9, "psnr": 29.9, "recorded_at": 1.0},
                                                  {"budget_macs": 1e9, "macs": 0.9e9, "psnr": 29.0, "recorded_at": 1.0}])
    assert width_line(store, "acla-car-q10", []) == [
        {"budget_macs": 1e9, "macs": 0.9e9, "psnr": 29.0, "recorded_at": 1.0, "search_run_id": "old-a"},
        {"budget_macs": 2e9, "macs": 1.9e9, "psnr": 30.1, "recorded_at": 2.0, "search_run_id": "old-b"}]
    mine = record_width_points(store, "acla-car-q10", {1e9: {"run_id": "w", "backbone": "c40-b8", "net": "40x8", "psnr": 29.4,
                                                             "macs": 0.95e9, "unrecorded": object()}},
                               {1e9: "new"})
    assert mine[0]["net"] == "40x8" and "unrecorded" not in mine[0] and mine[0]["search_run_id"] == "new"
    line = width_line(store, "acla-car-q10", mine)
    assert [(p["budget_macs"], p["psnr"]) for p in line] == [(1e9, 29.4), (2e9, 30.1)]
    assert {p["search_run_id"] for p in read_widths(store, "acla-car-q10")} == {"old-a", "old-b", "new"}
    assert read_trials(store, "acla-car-q10", missing_ok=True).num_rows == 0
