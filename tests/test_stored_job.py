"""The stored search request is the SearchJob itself (#23): it round-trips through JSON, keeps no password, and
the orchestrator's modules import one another without a circle (resume no longer replays the CLI)."""
import ast
import json
from pathlib import Path

import pytest

from orchestrator.cli import build_parser, platform_request, redacted_command, search_job_from_args
from orchestrator.records import SearchJob

ROOT = Path(__file__).resolve().parents[1]


def test_a_search_job_round_trips_through_its_stored_json():
    args = build_parser().parse_args(["search", "--budget", "3G", "--task", "denoise", "--sigma", "15", "--profile",
                                      "smoke", "--search-steps", "5", "--search-warmup", "2", "--trials", "3",
                                      "--attention", "acla-shared", "--seed", "7",
                                      "--tracking-uri", "postgresql://user:secret@127.0.0.1:5/db"])
    job = search_job_from_args(args)
    stored = json.loads(json.dumps(job.to_stored(3e9)))  # what the search state keeps
    assert "secret" not in json.dumps(stored)
    again = SearchJob.from_stored(stored, json_output=True, resume_parent="p1")
    assert again.task == job.task and again.profile == job.profile and again.data == job.data
    assert (again.profile.search_steps, again.profile.search_warmup) == (5, 2)  # the overrides, as searched
    assert (again.budgets, again.attention, again.trials, again.seed) == ((3e9,), "acla-shared", 3, 7)
    assert (again.json, again.resume_parent) == (True, "p1")
    assert again.request["tracking_uri"] == "postgresql://user:***@127.0.0.1:5/db"
    with pytest.raises(ValueError, match="version 1"):
        SearchJob.from_stored({"verb": "search", "budget": 3e9}, json_output=False, resume_parent="p1")


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
