import os
import shutil
import tempfile

import pytest
import torch

if not torch.cuda.is_available():
    # Triton kernels run on CPU tensors through Triton's interpreter where there is no GPU; set before the first
    # kernel is defined (search_space.ops imports them on first use). tests/test_triton_kernel.py.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from tests.s3server import ACCESS_KEY, SECRET_KEY, WeedServer


# The files that take longest (minutes: real searches, clusters, servers) go first, so that pytest-xdist's two
# workers (one file at a time each) share them evenly instead of meeting the longest ones at the end. xdist keeps
# this order only with --no-loadscope-reorder (the Makefile's); by default it puts the files with most tests first.
LONGEST_FIRST = ("test_orchestrator_verbs.py", "test_tracking_server_outage.py", "test_orchestrator_s3.py",
                 "test_orchestrator.py", "test_two_nodes.py", "test_faults.py", "test_retrain.py", "test_ablate_cli.py", "test_bad_input.py", "test_security.py",
                 "test_cli.py", "test_restore.py", "test_search.py")  # by pytest --durations, 2026-12-02 (and 12-07)


def pytest_collection_modifyitems(config, items):
    rank = {name: index for index, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file's own order is kept


@pytest.fixture(autouse=True)
def environment_restored():
    """Each test starts from the same environment: what one test's in-process Ray or MLflow set (RAY_ADDRESS of a
    cluster since shut down, a tracking URI) must not reach the next test's subprocesses."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def run_dir():
    """A run directory for acla-orch; short, because Ray's socket paths live under it."""
    path = tempfile.mkdtemp(prefix="acla-t-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def s3_server():
    folder = tempfile.mkdtemp(prefix="acla-weed-")
    server = WeedServer(folder).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """The standard AWS variables pointing at the test server (the one configuration users set)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return s3_server
