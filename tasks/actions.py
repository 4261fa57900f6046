"""The doit action around a stage: a StageFailed fails the task with one message; anything else is a bug."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from doit.exceptions import TaskFailed

from tasks.errors import StageFailed
from tasks.system import proc


class StageFailure(TaskFailed):
    """A task's StageFailed, as doit reports it: the message, and the log to read."""

    def __init__(self, title: str, failure: StageFailed):
        cell = title.partition(":")[2]
        # Most messages name their cell first; the title already does.
        message = str(failure).removeprefix(f"{cell}: ")
        super().__init__(f"{title} failed: {message}")
        self.log = str(failure.log) if failure.log else None


def run_stage(title: str, stage: Callable, *args) -> TaskFailed | None:
    """A doit action: run one stage; a StageFailed fails the task with its message alone.

    title names the task ("build:bookworm-nocloud-amd64"). Any other
    exception is a bug, and doit shows its traceback. A stage stopped by a
    signal ends with a KeyboardInterrupt whatever its cleanup raised instead:
    a doit worker that took it for a failure would wait for its next task,
    for ever when the main process was killed outright.
    """
    try:
        stage(*args)
    except Exception as error:
        if proc.stop_requested():
            raise KeyboardInterrupt(f"{title} stopped") from error
        if isinstance(error, StageFailed):
            return StageFailure(title, error)
        raise
    return None


def paths(files: Iterable[Path]) -> list[str]:
    """doit's file_dep and targets are strings."""
    return [str(p) for p in files]


def on_demand(action: tuple) -> dict:
    """A task run by name for what it shows (compare, changes, verify, cleanup): it always runs."""
    return {"actions": [action], "uptodate": [False], "verbosity": 2}
