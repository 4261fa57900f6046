"""What an image version is, and the order of versions.

A version is a date and a serial number: ``YYYYMMDD-N``. A build's own
default is the UTC start of its run (20261207-0600: the serial is the time,
HHMM); a CI pipeline's is the date and the pipeline's number (20261207-3).
Debian's cloud images are versioned the same way, Azure's gallery versions
and LXD's image versions are made from it, and simplestreams sorts by it.

Versions sort by date, then by serial as a number (20261207-0600 before
20261207-1200, 20261207-9 before 20261207-10), then by how the serial is
written (0600 before 600, which otherwise tie). Every place that compares
versions uses this order: `latest`, retention, the previous version of
changes.json, the release, cleanup. What storage holds under another name
(a directory made by hand) is not a version: never `latest`, never counted
by retention, never deleted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

FORM = "YYYYMMDD-N"
EXAMPLE = "20261207-0600"
_PATTERN = re.compile(r"(\d{8})-(\d{1,9})")
_RUN_TIME = "%Y%m%d-%H%M"  # a build's default version: the run's start


class NotAVersion(ValueError):
    pass


@dataclass(frozen=True, order=True)
class Version:
    date: str  # YYYYMMDD, a real date
    serial: int
    text: str = field(compare=True)  # as written: 0600 and 600 are different versions

    @classmethod
    def parse(cls, text: str) -> Version:
        """The version text names; NotAVersion says what was expected."""
        found = _PATTERN.fullmatch(text) if isinstance(text, str) else None
        if found:
            try:
                datetime.strptime(found[1], "%Y%m%d")
            except ValueError:
                found = None
        if not found:
            raise NotAVersion(
                f"expected a version {FORM} (a date, a dash and a serial number, e.g. {EXAMPLE}), got {text!r}"
            )
        return cls(found[1], int(found[2]), text)

    @classmethod
    def of(cls, text: str) -> Version | None:
        """The version text names, or None when it names none."""
        try:
            return cls.parse(text)
        except NotAVersion:
            return None

    @classmethod
    def of_run(cls, moment: datetime) -> Version:
        """A build's default version: the UTC time its run started, to the minute."""
        return cls.parse(moment.astimezone(UTC).strftime(_RUN_TIME))

    def __str__(self) -> str:
        return self.text

    @property
    def moment(self) -> datetime | None:
        """The time the version stands for when its serial is a time of day (four digits, HHMM), else None."""
        if len(self.text) != len(EXAMPLE):
            return None
        try:
            return datetime.strptime(self.text, _RUN_TIME).replace(tzinfo=UTC)
        except ValueError:
            return None


def ordered(names: Iterable[str]) -> list[str]:
    """The names that are versions, oldest first; the others are left out."""
    return [str(v) for v in sorted(v for v in map(Version.of, names) if v is not None)]


def newest(names: Iterable[str]) -> str | None:
    found = ordered(names)
    return found[-1] if found else None


def is_version(name: str) -> bool:
    return Version.of(name) is not None
