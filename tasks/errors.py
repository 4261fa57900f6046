"""The one exception type a stage raises for a failure its user can act on.

The doit actions (tasks/graph.py) turn it into a failed task that shows just
its message, prefixed with the task it failed in; anything else is a bug and
shows its traceback. A failure that has a log to read names it in ``log``:
the run summary (tasks/summary.py) shows that path beside the failed stage.
"""

from __future__ import annotations

from pathlib import Path


class StageFailed(Exception):
    def __init__(self, message: str, log: Path | None = None):
        super().__init__(message)
        self.log = log

    def __reduce__(self):
        # doit's worker processes send failures to the main process pickled.
        return (type(self), (str(self), self.log))


def log_tail(log: Path, lines: int = 15) -> str:
    """A failed command's log's last lines, indented, for its stage's message."""
    return "\n".join(f"  {line}" for line in log.read_text(errors="replace").splitlines()[-lines:])
