"""The stored search request is the SearchJob itself: it round-trips through JSON, keeps no password, and
the orchestrator's modules import one another without a circle (resume no longer replays the CLI)."""
import ast
import json
from pathlib import Path

import pytest

from orchestrator.cli.main import build_parser, platform_request, search_job_from_args
from orchestrator.runtime.settings import redacted_command
from orchestrator.runtime.records import SearchJob

ROOT = Path(__file__).resolve().parents[1]


def test_a_search_job_round_trips_through_its_stored_json():
    args = build_parser().parse_args(["search", "--budget", "3G", "--task", "denoise", "--sigma", "15", "--profile",
                                      "smoke", "--search-steps", "5", "--search-warmup", "2", "--trials", "3",
                                      "--attention", "acla-shared", "--seed", "7", "--no-width",
                                      "--tracking-uri", "postgresql://user:secret@127.0.0.1:5/db"])
    job = search_job_from_args(args)
    stored = json.loads(json.dumps(job.to_stored(3e9)))  # what the search state keeps
    assert "secret" not in json.dumps(stored)
    again = SearchJob.from_stored(stored, json_output=True, resume_parents={3e9: "p1"})
    assert again.task == job.task and again.profile == job.profile and again.data == job.data
    assert (again.profile.search_steps, again.profile.search_warmup) == (5, 2)  # the overrides, as searched
    assert (again.budgets, again.attention, again.trials, again.seed) == ((3e9,), "acla-shared", 3, 7)
    assert (again.json, again.resume_parent(3e9), again.sweep, again.width) == (True, "p1", None, False)
    del stored["job"]["width"]  # a job stored before the width line existed: on, its default
    assert SearchJob.from_stored(stored, json_output=False, resume_parents={}).width is True
    assert again.request["tracking_uri"] == "postgresql://user:***@127.0.0.1:5/db"
    with pytest.raises(ValueError, match="version 1"):
        SearchJob.from_stored({"verb": "search", "budget": 3e9}, json_output=False, resume_parents={3e9: "p1"})


def sweep_state(tmp_path, budgets=("2G", "3G", "4G")):
    """The search state a sweep leaves: each budget's search begun as the driver begins it."""
    from orchestrator.search.state import SearchState
    args = build_parser().parse_args(["sweep", "--budgets", ",".join(budgets), "--task", "car", "--profile", "smoke"])
    job, state = search_job_from_args(args), SearchState(tmp_path)
    return job, state


def test_a_sweep_resumes_as_one_job_its_unbegun_budgets_included(tmp_path, monkeypatch):
    from orchestrator.search import resume
    from orchestrator.search.state import SearchState
    job, state = sweep_state(tmp_path)
    assert job.sweep.budgets == (2e9, 3e9, 4e9) and len(job.sweep.id) == 12
    state.begin("p2", "e1", job.to_stored(2e9))
    state.end("p2", "finished")
    state.begin("p3", "e1", job.to_stored(3e9))  # this process "dies" here: 3G cut off, 4G never begun
    other, _ = sweep_state(tmp_path / "other", ("2G",))
    state.begin("q2", "e1", other.to_stored(2e9))  # another sweep in the same run directory, begun later, finished
    state.end("q2", "finished")
    monkeypatch.setattr("orchestrator.search.state.driver_alive", lambda host, pid: False)
    searches = SearchState(tmp_path).searches()
    picked = resume.pick_search(SearchState(tmp_path), None)
    assert picked["parent_run_id"] == "p3"
    assert resume.resume_targets(searches, picked) == ((3e9, 4e9), {3e9: "p3"})
    from orchestrator.cli.commands import sweep_rows  # what `status` shows of each sweep
    assert sweep_rows(searches) == [
        {"id": job.sweep.id, "budgets": [2e9, 3e9, 4e9], "parent_run_ids": ["p2", "p3"], "not_begun": [4e9]},
        {"id": other.sweep.id, "budgets": [2e9], "parent_run_ids": ["q2"], "not_begun": []}]
    # any budget of the sweep names it: the finished one too, while the sweep is unfinished
    finished = next(s for s in searches if s["parent_run_id"] == "p2")
    assert resume.pick_search(SearchState(tmp_path), "p2") == finished
    assert resume.resume_targets(searches, finished) == ((3e9, 4e9), {3e9: "p3"})
    with pytest.raises(Exception, match="has finished"):  # the other sweep is its own, and it has finished
        resume.pick_search(SearchState(tmp_path), "q2")
    # `resume` runs the stored job once, for both budgets, continuing p3 and beginning 4G
    ran = []
    monkeypatch.setattr("orchestrator.search.job.run_search", lambda job, run, store: ran.append(job) or 0)
    args = build_parser().parse_args(["resume", "--last", "--json"])
    monkeypatch.setenv("ACLA_HOME", str(tmp_path))
    import sqlite3
    sqlite3.connect(tmp_path / "mlflow.db").execute("CREATE TABLE t (x)")  # the search's store (resume reads it)
    from orchestrator.cli.resume import command_resume
    assert command_resume(args) == 0
    assert len(ran) == 1 and ran[0].budgets == (3e9, 4e9) and ran[0].sweep == job.sweep
    assert (ran[0].resume_parent(3e9), ran[0].resume_parent(4e9)) == ("p3", None)
    assert json.loads(json.dumps(ran[0].to_stored(4e9)))["sweep"] == {"id": job.sweep.id, "budgets": [2e9, 3e9, 4e9]}


def test_a_sweep_cut_off_between_two_budgets_is_found_by_resume_last(tmp_path, monkeypatch):
    from orchestrator.search import resume
    from orchestrator.search.state import SearchState
    job, state = sweep_state(tmp_path, ("2G", "3G"))
    state.begin("p2", "e1", job.to_stored(2e9))
    state.end("p2", "finished")
    with pytest.raises(Exception, match="no interrupted search"):  # its driver is this process: still running
        resume.pick_search(SearchState(tmp_path), None)
    monkeypatch.setattr("orchestrator.search.state.driver_alive", lambda host, pid: False)
    searches = SearchState(tmp_path).searches()
    picked = resume.pick_search(SearchState(tmp_path), None)
    assert picked["parent_run_id"] == "p2" and resume.resume_targets(searches, picked) == ((3e9,), {})
    state.begin("p3", "e1", job.to_stored(3e9))
    state.end("p3", "finished")
    with pytest.raises(Exception, match="nothing to resume"):  # every budget finished
        resume.pick_search(SearchState(tmp_path), None)


def test_no_password_in_the_stored_command_line():
    line = redacted_command(["acla-orch", "search", "--tracking-uri", "postgresql://u:pw@h/db",
                             "--tracking-uri=http://a:b@h/x"])
    assert "pw" not in line and ":b@" not in line and "u:***@h/db" in line


def test_platform_request_names_only_where_the_search_runs():
    args = build_parser().parse_args(["search", "--budget", "3G", "--task", "car"])
    assert set(platform_request(args)) == {"tracking_uri", "artifact_root", "address", "s3_endpoint", "create_bucket"}


def test_the_orchestrator_imports_no_circle():
    modules = {}
    for path in (ROOT / "orchestrator").glob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                found.update([node.module.split(".")[0]] if node.module else [a.name for a in node.names])
        modules[path.stem] = found & {p.stem for p in (ROOT / "orchestrator").glob("*.py")}

    def reaches(start, node, seen):
        for other in modules[node]:
            if other == start:
                return True
            if other not in seen:
                seen.add(other)
                if reaches(start, other, seen):
                    return True
        return False
    assert [name for name in sorted(modules) if reaches(name, name, set())] == []


def test_a_sweep_shares_one_supernet_unless_separate_and_keeps_that_through_resume():
    def job_of(*argv):
        return search_job_from_args(build_parser().parse_args([*argv, "--task", "car", "--profile", "smoke"]))
    shared, separate = job_of("sweep", "--budgets", "2G,3G"), job_of("sweep", "--budgets", "2G,3G", "--separate")
    assert shared.shared and not separate.shared and not job_of("search", "--budget", "2G").shared
    for job in (shared, separate):
        again = SearchJob.from_stored(json.loads(json.dumps(job.to_stored(2e9))), json_output=False,
                                      resume_parents={2e9: "p1"})
        assert again.shared == job.shared
    older = shared.to_stored(2e9)
    del older["job"]["shared"]  # a job stored before the shared supernet existed searched each budget on its own
    assert not SearchJob.from_stored(older, json_output=False, resume_parents={2e9: "p1"}).shared


def test_a_sweeps_finetune_steps_reach_its_profile_and_survive_resume():
    job = search_job_from_args(build_parser().parse_args(["sweep", "--budgets", "2G,3G", "--task", "car", "--profile",
                                                          "smoke", "--finetune-steps", "5"]))
    assert job.profile.sweep_steps() == 5 and job.profile.train_steps != 5
    again = SearchJob.from_stored(json.loads(json.dumps(job.to_stored(2e9))), json_output=False,
                                  resume_parents={2e9: "p1"})
    assert again.profile.sweep_steps() == 5
    default = search_job_from_args(build_parser().parse_args(["sweep", "--budgets", "2G,3G", "--task", "car",
                                                              "--profile", "smoke"]))
    assert default.profile.sweep_steps() == default.profile.sweep_train_steps == 3
    older = default.to_stored(2e9)  # stored before the fine-tune existed: its trials trained train_steps
    del older["job"]["profile"]["sweep_train_steps"]
    resumed = SearchJob.from_stored(older, json_output=False, resume_parents={2e9: "p1"})
    assert resumed.profile.sweep_steps() == resumed.profile.train_steps
