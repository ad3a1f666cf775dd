"""Ray Tune callbacks of a search, run in the driver: the trial recorder (start, progress, end, error) and the
stopper that ends the search when the S3 artifact store stops answering, or its records cannot be sent (a
tracking server away for longer than the search's patience, tracking/outage.py)."""
from __future__ import annotations

import time

from ray import tune

class RecordTrials(tune.Callback):
    """A Ray Tune callback that runs in the driver and hands each finished or failed trial to a handler.

    Tune pickles its run config, and the handlers hold the MLflow client and the progress bar, so they stay in
    a driver-side registry and the callback pickles as its key alone. A handler's error is kept for the driver
    to re-raise after the trials: Tune would only log its traceback and go on.
    """
    _handlers: dict[int, tuple] = {}
    errors: dict[int, BaseException] = {}

    def __init__(self, on_complete, on_error, on_start=None, on_result=None, key: int | None = None) -> None:
        self.key = id(on_complete) if key is None else key
        RecordTrials._handlers.setdefault(self.key, (on_complete, on_error, on_start, on_result))

    def __reduce__(self):
        return (_restore_callback, (self.key,))

    def _call(self, which: int, trial, *extra) -> None:
        handlers = RecordTrials._handlers.get(self.key)
        if handlers is None or self.key in RecordTrials.errors:  # restored elsewhere, or already failed
            return
        try:
            if handlers[which] is not None:
                handlers[which](trial, *extra)
        except Exception as err:
            RecordTrials.errors[self.key] = err

    def on_step_begin(self, iteration, trials, **info):
        from orchestrator.runtime.errors import raise_if_cancelled
        raise_if_cancelled()  # a signal whose exception was dropped (a __del__ ran the handler) cancels here

    def on_trial_start(self, iteration, trials, trial, **info):
        self._call(2, trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._call(3, trial, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._call(0, trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._call(1, trial)

    def finish(self) -> None:
        """Forget the handlers; re-raise a handler's error."""
        RecordTrials._handlers.pop(self.key, None)
        error = RecordTrials.errors.pop(self.key, None)
        if error is not None:
            raise error


class StopOnStoreFailure(tune.Stopper):
    """Stops every trial, and starts no new one, once recording a trial has failed (in the callbacks, or in the
    sender of its records) or (with an S3 artifact root) the store has stopped answering: probed every
    PROBE_SECONDS, failed after two misses in a row, so a search notices an outage within about 10 s even while no
    trial is finishing. Runs in the driver; like RecordTrials it pickles as its key."""
    PROBE_SECONDS = 4.0
    _stores: dict[int, object] = {}
    _probes: dict[int, list] = {}  # key -> [time of the last probe, misses in a row]: kept across copies
    _senders: dict[int, object] = {}
    failures: dict[int, str] = {}

    def __init__(self, key: int, storage=None, sender=None) -> None:
        self.key = key
        if storage is not None:
            StopOnStoreFailure._stores[key] = storage
            StopOnStoreFailure._probes[key] = [0.0, 0]
        if sender is not None:
            StopOnStoreFailure._senders[key] = sender

    def __reduce__(self):
        return (StopOnStoreFailure, (self.key,))

    def __call__(self, trial_id, result) -> bool:
        return False

    def stop_all(self) -> bool:
        if self.key in RecordTrials.errors or self.key in StopOnStoreFailure.failures:
            return True
        sender = StopOnStoreFailure._senders.get(self.key)
        if sender is not None and sender.failed():
            return True
        storage, probe = StopOnStoreFailure._stores.get(self.key), StopOnStoreFailure._probes.get(self.key)
        if storage is None or probe is None or time.monotonic() - probe[0] < self.PROBE_SECONDS:
            return False
        probe[0] = time.monotonic()
        from storage.stores import StorageError, check_bucket
        try:
            check_bucket(storage)
            probe[1] = 0
        except StorageError as err:
            probe[1] += 1
            if probe[1] >= 2:
                StopOnStoreFailure.failures[self.key] = str(err)
                return True
        return False

    def finish(self) -> None:
        """Forget the store; raise the outage it saw."""
        from storage.stores import StorageError
        StopOnStoreFailure._stores.pop(self.key, None)
        StopOnStoreFailure._probes.pop(self.key, None)
        StopOnStoreFailure._senders.pop(self.key, None)
        failure = StopOnStoreFailure.failures.pop(self.key, None)
        if failure is not None:
            raise StorageError(failure)


def _restore_callback(key: int) -> RecordTrials:
    return RecordTrials(None, None, key=key)
