"""One progress bar for every verb that counts something (training steps, images, retraining steps): on stderr,
on a terminal only, so that piped output and `--json` stay clean."""
from __future__ import annotations

import sys
from contextlib import contextmanager


class Bar:
    """What a verb moves: `advance()` by one, or `update(completed, status)` to a count with a short status."""

    def __init__(self, progress, task) -> None:
        self._progress, self._task = progress, task

    def advance(self) -> None:
        self._progress.advance(self._task)

    def update(self, completed: int, status: str = "") -> None:
        self._progress.update(self._task, completed=completed, status=status)


@contextmanager
def progress_bar(description: str, total: int, *, enabled: bool = True, transient: bool = False):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
               TextColumn("{task.fields[status]}"))
    with Progress(*columns, transient=transient, disable=not (enabled and sys.stderr.isatty())) as progress:
        yield Bar(progress, progress.add_task(description, total=total, status=""))


def loss_status(record: dict) -> str:
    """A training record's short status: its loss."""
    return f"loss {record.get('loss', record.get('val_loss', 0.0)):.4f}"
