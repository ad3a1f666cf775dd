"""The wait for a tracking server that went away (orchestrator/tracking/outage.py), on its own: a fake clock and
real HTTP requests to a port where nothing listens, then to one where a server answers 503 and then 200."""
import http.server
import socket
import threading
import time

import pytest

from orchestrator.tracking.outage import Sender, TrackingAway, TrackingWait


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: a connection there is refused


def test_a_server_that_never_answers_is_waited_for_exactly_the_patience_then_given_up():
    import requests
    clock, lines = Clock(), []
    wait = TrackingWait("http://tracking:5000", 30, retry_seconds=4, clock=clock, sleep=clock.sleep, tell=lines.append)
    url = f"http://127.0.0.1:{closed_port()}/api"
    with pytest.raises(TrackingAway) as raised:
        wait.send(requests.get, url, timeout=2)
    assert clock.now == 30  # 4 s between tries, the last wait cut to what was left of the patience
    assert raised.value.seconds == 30 and "http://tracking:5000" in str(raised.value)
    assert len(lines) == 1 and "unreachable (connection refused)" in lines[0] and "waits up to 30 s" in lines[0]
    with pytest.raises(TrackingAway):  # given up: every later request fails at once, nothing more is said
        wait.send(requests.get, url, timeout=2)
    assert clock.now == 30 and len(lines) == 1
    assert not issubclass(TrackingAway, Exception)  # MLflow's `except Exception` wrappers pass it on


class Flaky(http.server.BaseHTTPRequestHandler):
    answers: list[int] = []

    def do_GET(self):
        code = Flaky.answers.pop(0) if Flaky.answers else 200
        self.send_response(code)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


def test_transient_answers_are_waited_for_and_the_return_is_said_with_what_waited():
    import requests
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        Flaky.answers = [503, 500, 502]  # a server whose database is down answers 5xx
        clock, lines = Clock(), []
        wait = TrackingWait("http://t", 60, retry_seconds=5, clock=clock, sleep=clock.sleep, tell=lines.append)
        wait.backlog = lambda: 4  # records queued behind this one
        response = wait.send(requests.get, f"http://127.0.0.1:{server.server_port}/x", timeout=5)
        assert response.status_code == 200 and clock.now == 15
        assert lines[0].startswith("tracking server http://t unreachable (HTTP 503)")
        assert lines[1] == "tracking server http://t is back after 15 s; sending the 5 record(s) that waited"
        Flaky.answers = [404]  # an answer that is not an outage comes back as it is, and says nothing
        assert wait.send(requests.get, f"http://127.0.0.1:{server.server_port}/x", timeout=5).status_code == 404
        assert len(lines) == 2 and wait.away_since is None
    finally:
        server.shutdown()


def test_the_sender_keeps_order_goes_on_for_its_caller_and_stops_at_a_failure():
    done, gate = [], threading.Event()
    sender = Sender(TrackingWait("http://t", 60))
    sender.submit(lambda: gate.wait(10) and done.append(1))
    started = time.monotonic()
    sender.submit(done.append, 2)  # handed in while the first still waits: the caller is not held
    assert time.monotonic() - started < 1 and done == []
    gate.set()
    sender.submit(lambda: (_ for _ in ()).throw(TrackingAway("http://t", 60)))
    sender.submit(done.append, 3)  # after a failure nothing more is sent: it waits for `resume`
    with pytest.raises(TrackingAway):
        sender.drain()
    assert done == [1, 2] and sender.failed()
    # what was not sent is kept, in order, for `resume`: the write that failed and the one after it
    assert [args for _, args, _ in sender.unsent] == [(), (3,)] and sender.unsent[1][0] == done.append


def test_an_abandoned_sender_lets_the_write_under_way_end_and_sends_nothing_more():
    """A search cut off (Ctrl-C) closes its runs: no queued write may land after that. The write under way ends;
    a wait for a server that is away gives up at its next try."""
    done, started, gate = [], threading.Event(), threading.Event()
    clock = Clock()
    wait = TrackingWait("http://t", 600, clock=clock, sleep=clock.sleep, tell=lambda line: None)
    sender = Sender(wait)
    sender.submit(lambda: started.set() or (gate.wait(10) and done.append(1)))
    sender.submit(done.append, 2)
    assert started.wait(10)  # the first write is under way when the search is cut off
    threading.Timer(0.2, gate.set).start()
    sender.abandon()
    assert done == [1] and not sender.thread.is_alive() and wait.fail_fast
    assert [(write, args) for write, args, _ in sender.unsent] == [(done.append, (2,))]  # kept for `resume`
    with pytest.raises(TrackingAway):  # a request meeting the outage now fails at once instead of waiting
        wait.missed("connection refused")
    assert clock.now == 0


def test_the_wait_holds_mlflow_requests_to_its_server_only():
    """Installed, the wait replaces MLflow's one HTTP choke point for the tracking server's URL; other hosts
    (a presigned S3 URL, say) keep MLflow's own retries. Uninstalled, MLflow is as it was."""
    from mlflow.utils import rest_utils

    from orchestrator.tracking import outage
    original = rest_utils._get_http_response_with_retries
    assert outage.install("sqlite:///x.db", 60) is None and rest_utils._get_http_response_with_retries is original
    port = closed_port()
    wait = outage.install(f"http://127.0.0.1:{port}", 0.5)
    try:
        assert outage.current() is wait and rest_utils._get_http_response_with_retries is not original
        from mlflow.utils.rest_utils import MlflowHostCreds, http_request
        with pytest.raises(TrackingAway):
            http_request(MlflowHostCreds(f"http://127.0.0.1:{port}"), "/api/2.0/mlflow/experiments/list", "GET")
    finally:
        outage.uninstall()
    assert rest_utils._get_http_response_with_retries is original and outage.current() is None


def test_progress_that_waited_is_kept_in_order_and_sent_by_resume(tmp_path, monkeypatch):
    """A search that gave up: its unsent progress reports go to the search state, in order, under their search;
    `send_what_waited` makes the run of a finished trial that has none, puts its curve and result on it, sends the
    curve of a trial cut off to that trial's run, and forgets what it sent (a second resume sends nothing)."""
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.tracking import MlflowClient

    from orchestrator.search.driver import keep_waiting_progress, send_what_waited
    from orchestrator.search.state import SearchState
    from workers.profiles import get_profile
    from workers.tasks import task_from_options
    from orchestrator.search.trial import TrialSettings
    from storage.stores import StorageConfig, open_store

    state = SearchState(tmp_path)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("acla-car-q10", artifact_location=str(tmp_path / "artifacts"))
    parent = client.create_run(experiment).info.run_id
    state.begin(parent, experiment, {})

    def send_progress(parent_id, trial_id, report):  # the driver's: only its entries are progress
        raise AssertionError("never called here")
    report = lambda step, loss: {"progress_phase": "train", "progress_step": step, "progress_loss": loss}  # noqa: E731
    unsent = [(send_progress, (parent, "cut", report(1, 0.5)), {}), (print, ("not progress",), {}),
              (send_progress, (parent, "done", report(1, 0.9)), {}), (send_progress, (parent, "done", report(2, 0.7)), {}),
              (send_progress, (parent, "cut", report(2, 0.4)), {})]
    keep_waiting_progress(state, unsent, send_progress)
    assert state.waiting_progress(parent) == {"cut": [report(1, 0.5), report(2, 0.4)],
                                              "done": [report(1, 0.9), report(2, 0.7)]}

    cut_run = client.create_run(experiment, tags={"mlflow.parentRunId": parent}).info.run_id
    state.trial_started(parent, "cut", {"backbone": "c8-b2"}, 0)
    state.trial_run(parent, "cut", cut_run)
    from search_space.genotype import Genotype
    task = task_from_options("car")
    genotype = Genotype(task=task.name, scale=task.scale, in_channels=task.in_channels, channels=8, blocks=2, stages=1)
    state.trial_started(parent, "done", {"backbone": "c8-b2"}, 0)
    state.trial_finished(parent, "done", {"psnr": 30.0, "macs": 1e9, "ssim": 0.9, "genotype": genotype.to_json()})
    settings = TrialSettings(task=task, profile=get_profile("smoke"), data=None, seed=0, budget_macs=2e9)
    store = open_store(StorageConfig(str(tmp_path / "artifacts")))
    assert send_what_waited(client, store, state, experiment, parent, settings) == (1, 4)
    done_run = state.trials(parent)[1]["mlflow_run_id"]
    assert done_run and done_run != cut_run and state.unsent(parent) == []
    curve = lambda run_id: [(m.step, m.value) for m in client.get_metric_history(run_id, "train_loss")]  # noqa: E731
    assert curve(done_run) == [(1, 0.9), (2, 0.7)] and curve(cut_run) == [(1, 0.5), (2, 0.4)]
    assert client.get_run(done_run).data.metrics["psnr"] == 30.0
    assert state.waiting_progress(parent) == {}
    assert send_what_waited(client, store, state, experiment, parent, settings) == (0, 0)
