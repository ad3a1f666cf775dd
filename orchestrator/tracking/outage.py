"""A search that outlives its tracking server.

While a search runs, every HTTP request to its MLflow server goes through `TrackingWait`: a request that cannot
reach the server (connection refused or reset, a timeout, or a 429/5xx answer such as a server whose database is
down) is tried again every few seconds instead of failing, for at most `patience` seconds of one outage. The
first miss says so in one line (the server, and how long the search will wait); the first success after it says
the server is back and how many records had waited. When the patience is spent, `TrackingAway` is raised: a
BaseException, so that MLflow's own `except Exception` wrappers pass it on, and the search stops cleanly
(search/job.py), its state marked interrupted, for `acla-orch resume --last`.

The requests are held at MLflow's one HTTP choke point, `mlflow.utils.rest_utils._get_http_response_with_retries`
(every REST store, registry and artifact-proxy call of MLflow 3.x goes through it), and only for the search's own
server; MLflow's own retries are turned off there, so the wait is this module's and nothing else's.

The search's writes during its trials go through `Sender`: one thread that sends them in order, so Ray Tune's
loop (and every trial) goes on while the server is away. Trials that finish meanwhile are kept in the search's
own state first (search/state.py), so a search that gives up loses none of them.
"""
from __future__ import annotations

import contextlib
import queue
import sys
import threading
import time
from urllib.parse import urlparse

from orchestrator.runtime.settings import redact

EXIT_TRACKING_AWAY = 75  # EX_TEMPFAIL: the search stopped because its tracking server stayed away; resume it
RETRY_SECONDS = 5.0  # between two tries of a request while the server is away
TRANSIENT_STATUSES = (429, 500, 502, 503, 504)


class TrackingAway(BaseException):
    """The tracking server stayed away longer than the search's patience."""

    def __init__(self, uri: str, seconds: float) -> None:
        super().__init__(f"tracking server {uri} unreachable for {seconds:.0f} s")
        self.uri, self.seconds = uri, seconds


def say(line: str) -> None:
    print(f"acla-orch: {line}", file=sys.stderr, flush=True)


class TrackingWait:
    """The outage state of one tracking server, shared by every thread of the driver."""

    def __init__(self, uri: str, patience: float, *, retry_seconds: float = RETRY_SECONDS, clock=time.monotonic,
                 sleep=time.sleep, tell=say) -> None:
        self.uri, self.patience, self.retry_seconds = uri, float(patience), retry_seconds
        self.clock, self.sleep, self.tell = clock, sleep, tell
        self.away_since: float | None = None
        self.gave_up: TrackingAway | None = None
        self.waiting = 0  # requests held by the current outage
        self.backlog = lambda: 0  # records queued behind them (the Sender's)
        self.fail_fast = False  # set while a search that is stopping closes what it can: no waiting then
        self.lock = threading.Lock()

    def missed(self, reason: str) -> None:
        """One request did not reach the server: wait before the next try, or give up (TrackingAway)."""
        with self.lock:
            now = self.clock()
            if self.gave_up is not None or self.fail_fast:
                raise self.gave_up or TrackingAway(self.uri, 0.0 if self.away_since is None else now - self.away_since)
            if self.away_since is None:
                self.away_since = now
                self.tell(f"tracking server {self.uri} unreachable ({reason}); the search goes on and waits up to "
                          f"{self.patience:.0f} s for it (--tracking-patience)")
            away = now - self.away_since
            if away >= self.patience:
                self.gave_up = TrackingAway(self.uri, away)
                raise self.gave_up
            wait = min(self.retry_seconds, self.patience - away)
        self.sleep(wait)

    def reached(self) -> None:
        """A request reached the server: an outage, if there was one, is over."""
        if self.away_since is None:
            return
        with self.lock:
            if self.away_since is None:
                return
            away, self.away_since = self.clock() - self.away_since, None
            waited, self.waiting = self.waiting + self.backlog(), 0
        self.tell(f"tracking server {self.uri} is back after {away:.0f} s; sending the {waited} record(s) that waited")

    def send(self, request, *args, **kwargs):
        """`request(*args, **kwargs)` (one HTTP request, MLflow's own retries off), tried until it reaches the
        server or the patience is spent."""
        import requests
        held = False
        try:
            while True:
                try:
                    response = request(*args, **kwargs)
                except (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                        requests.exceptions.RetryError) as err:
                    reason = short_reason(err)
                else:
                    if response.status_code not in TRANSIENT_STATUSES:
                        self.reached()
                        return response
                    reason = f"HTTP {response.status_code}"
                if not held:
                    held = True
                    with self.lock:
                        self.waiting += 1
                self.missed(reason)
        finally:
            if held:
                with self.lock:
                    self.waiting = max(self.waiting - 1, 0)


def short_reason(err: BaseException) -> str:
    text = str(err)
    for known in ("Connection refused", "Connection reset", "Read timed out", "timed out", "Name or service not known",
                  "too many 5", "too many 4"):
        if known in text:
            return "an HTTP error answer" if known.startswith("too many") else known.lower()
    return err.__class__.__name__


_installed: dict = {}


def install(uri: str, patience: float, **options) -> TrackingWait | None:
    """Hold this process's MLflow requests to `uri` (an http(s) tracking server) through a TrackingWait; None for
    a database or file store, which has no server to lose."""
    if urlparse(uri).scheme not in ("http", "https"):
        return None
    from mlflow.utils import rest_utils
    original = _installed.get("original") or rest_utils._get_http_response_with_retries
    wait = TrackingWait(redact(uri), patience, **options)
    base = uri.rstrip("/")

    def held(method, url, max_retries, backoff_factor, backoff_jitter, retry_codes, raise_on_status=True, **kwargs):
        if not url.startswith(base):
            return original(method, url, max_retries, backoff_factor, backoff_jitter, retry_codes, raise_on_status,
                            **kwargs)
        # MLflow's own retries off (0): the wait above is the only one, and a 5xx answer comes back as a response
        return wait.send(original, method, url, 0, backoff_factor, backoff_jitter, retry_codes, False, **kwargs)

    rest_utils._get_http_response_with_retries = held
    _installed.update(original=original, wait=wait)
    return wait


def uninstall() -> None:
    from mlflow.utils import rest_utils
    if "original" in _installed:
        rest_utils._get_http_response_with_retries = _installed.pop("original")
    _installed.pop("wait", None)


def current() -> TrackingWait | None:
    return _installed.get("wait")


@contextlib.contextmanager
def held(uri: str, patience: float):
    """`install` for the duration of a block (a search), `uninstall` after it, however it ends."""
    install(uri, patience)
    try:
        yield
    finally:
        uninstall()


class Sender:
    """One thread that runs the search's tracking writes in the order they were handed in. A write that meets an
    outage waits (TrackingWait) while the caller goes on; one that gives up stops the thread, and `failure` says
    why. `drain()` waits until every write handed in is done; `abandon()`, for a search cut off, sends nothing
    more. `unsent` holds, in order, each write (write, args, kwargs) that was handed in and not done: the one
    that failed and every one after it, or those still queued when the search was cut off."""

    def __init__(self, wait: TrackingWait | None) -> None:
        self.queue: queue.Queue = queue.Queue()
        self.failure: BaseException | None = None
        self.abandoned = False
        self.unsent: list[tuple] = []
        self.wait = wait
        if wait is not None:
            wait.backlog = self.queue.qsize
        self.thread = threading.Thread(target=self._run, name="tracking-sender", daemon=True)
        self.thread.start()

    def submit(self, write, *args, **kwargs) -> None:
        if self.wait is None:  # a database or file store, no server to ride out: written at once, as it comes
            write(*args, **kwargs)
            return
        self.queue.put((write, args, kwargs))

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                self.queue.task_done()
                return
            write, args, kwargs = item
            try:
                if self.failure is None and not self.abandoned:
                    write(*args, **kwargs)
                else:  # what is left waits for `resume`
                    self.unsent.append(item)
            except BaseException as err:  # kept for the driver, which re-raises it after the trials
                self.failure = err
                self.unsent.append(item)
            finally:
                self.queue.task_done()

    def failed(self) -> bool:
        return self.failure is not None

    def abandon(self, timeout: float = 30.0) -> None:
        """A search cut off (Ctrl-C, SIGTERM, an error): the writes still queued are dropped, so none lands after
        the search has closed its runs; the write under way ends first (one waiting for a server that is away gives
        up at its next try). Its results are in the search state, for `resume`."""
        self.abandoned = True
        if self.wait is not None:
            self.wait.fail_fast = True
        self.queue.put(None)
        self.thread.join(timeout)

    def drain(self) -> None:
        """Wait for every write handed in; re-raise the first that failed."""
        self.queue.join()
        self.queue.put(None)
        self.thread.join()
        if self.failure is not None:
            raise self.failure
