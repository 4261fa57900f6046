"""Progress of long stages: a rich bar on a terminal, plain lines elsewhere.

CI logs and parallel doit workers (whose output interleaves) get plain,
timestamped lines at most every few seconds, plus one whenever the stage's
status text changes.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.progress import Progress

PLAIN_INTERVAL = float(os.environ.get("IMAGES_PROGRESS_INTERVAL", "15"))


def interactive() -> bool:
    """A live display only where one person watches one process."""
    return (
        sys.stderr.isatty()
        and os.environ.get("TERM") != "dumb"
        and multiprocessing.current_process().name == "MainProcess"
    )


class StageProgress:
    """Progress of one stage of one cell (use as a context manager).

    unit "bytes" shows transferred/total bytes, "steps" n of m, "seconds"
    seconds of a time limit.
    """

    def __init__(self, label: str, total: float | None = None, unit: str = "bytes"):
        self.label = label
        self.total = total
        self.unit = unit
        self.completed = 0.0
        self.status = ""
        self.started = time.monotonic()
        self._last_line = 0.0
        self._live: Progress | None = None

    def __enter__(self) -> StageProgress:
        if interactive():
            self._live = _shared_display(self.unit)
            self._task = self._live.add_task(self.label, total=self.total, status="")
        else:
            self._line(force=True)
        return self

    def update(self, completed: float | None = None, advance: float = 0, status: str | None = None) -> None:
        if completed is not None:
            self.completed = completed
        self.completed += advance
        changed = status is not None and status != self.status
        if status is not None:
            self.status = status
        if self._live:
            self._live.update(self._task, completed=self.completed, status=self.status)
        else:
            self._line(force=changed)

    def _line(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_line < PLAIN_INTERVAL:
            return
        self._last_line = now
        amount = ""
        if self.total:
            if self.unit == "bytes":
                amount = f" {self.completed / 2**20:.0f}/{self.total / 2**20:.0f} MiB"
            elif self.unit == "seconds":
                amount = f" {self.completed:.0f}/{self.total:.0f} s"
            else:
                amount = f" {self.completed:.0f}/{self.total:.0f}"
        status = f" {self.status}" if self.status else ""
        print(f"[{self.label}]{amount}{status} ({now - self.started:.0f} s)", file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> None:
        if self._live:
            _release_display()
        else:
            outcome = "done" if exc[0] is None else "interrupted" if exc[0] is KeyboardInterrupt else "failed"
            print(
                f"[{self.label}] {outcome} after {time.monotonic() - self.started:.0f} s", file=sys.stderr, flush=True
            )


# One live display per process: stages that run side by side in threads (the
# boot test's firmwares) show as rows of the display the first one opened.
_display_lock = threading.Lock()
_display: Progress | None = None
_display_users = 0


def _shared_display(unit: str) -> Progress:
    global _display, _display_users
    with _display_lock:
        if _display is None:
            # Imported here: loading the task graph (a no-op run) never needs rich.
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TransferSpeedColumn,
            )

            amount = [DownloadColumn(), TransferSpeedColumn()] if unit == "bytes" else [MofNCompleteColumn()]
            _display = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                *amount,
                TimeElapsedColumn(),
                TextColumn("{task.fields[status]}"),
                console=Console(stderr=True),
                transient=False,
            )
            _display.start()
        _display_users += 1
        return _display


def _release_display() -> None:
    global _display, _display_users
    with _display_lock:
        _display_users -= 1
        if _display_users == 0 and _display is not None:
            _display.stop()
            _display = None
