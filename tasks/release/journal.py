"""The release journal: the steps of one release already done, kept across attempts.

A release that failed part-way (the mail server was down, a region refused a
copy) is run again; the steps done for the same image (its manifest's
checksum) with the same settings are not done twice: no second instance test,
no second AMI in a region that has one. The platforms look their images up by
name as well, so that even a lost journal makes no duplicate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasks.system import atomic


class Journal:
    def __init__(self, path: Path | None, image: str):
        self.path = path  # None: kept in memory only
        saved = atomic.read_json(path) if path and path.exists() else {}
        self.steps: dict[str, Any] = saved.get("steps", {}) if saved.get("image") == image else {}
        self.image = image

    def done(self, step: str, settings) -> Any:
        entry = self.steps.get(step)
        return entry["result"] if entry and entry["settings"] == settings else None

    def record(self, step: str, settings, result) -> None:
        self.steps[step] = {"settings": settings, "result": result}
        if self.path:
            atomic.write_json(self.path, {"image": self.image, "steps": self.steps})

    def part(self, step: str, settings) -> Part:
        """The journal of one step's parts (an AMI per region), under the step's settings."""
        return Part(self, step, settings)

    def finished(self) -> None:
        if self.path:
            self.path.unlink(missing_ok=True)


class Part:
    def __init__(self, journal: Journal, step: str, settings):
        self.journal, self.step, self.settings = journal, step, settings

    def recall(self, name: str) -> Any:
        return self.journal.done(f"{self.step}/{name}", self.settings)

    def remember(self, name: str, result) -> None:
        self.journal.record(f"{self.step}/{name}", self.settings, result)


def scratch() -> Part:
    """A journal that keeps nothing (for a platform step run on its own)."""
    return Journal(None, "").part("scratch", None)
