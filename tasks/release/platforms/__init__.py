"""The cloud platforms a release uploads to, one module each, in the way mkosi keeps its distributions.

A platform's module declares one `Platform` class, which holds all the
project knows of that cloud:

- `name`: the vendor it serves, and its key under release.platforms in matrix.yaml;
- `settings`: the dataclass of its account's settings (tasks/model/settings.py's
  `setting()` fields), from which matrix parsing, its errors and the settings
  table come;
- `upload(cell, files, manifest, settings, journal)`: put the image on the platform,
  register it there, and return what it made (identifiers a person or a later
  step needs); `files.raw` is the raw disk;
- `expired(settings, keep, architectures)`: what a release made there beyond the
  newest `keep` of each cell, for `doit cleanup`.

Defining the class registers it: adding a platform is adding a module here.
Modules import their cloud's client library only when they call it, since
the matrix reader imports them all to know their settings.
"""

from __future__ import annotations

import importlib
import itertools
import pkgutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from tasks.model.version import Version

if TYPE_CHECKING:
    from tasks.model.layout import CellFiles
    from tasks.model.matrix import Cell
    from tasks.model.records import Manifest
    from tasks.release.journal import Part


@dataclass
class Expired:
    """One thing beyond retention: where it is, what it is, and how it goes."""

    platform: str
    where: str  # region, project, storage
    cell: str
    version: str
    what: str  # the AMI id, the image or directory name
    parts: tuple[str, ...] = ()  # what goes with it: snapshots
    remove: Callable[[], None] = field(default=lambda: None, repr=False)

    def describe(self) -> str:
        extra = f" (with {', '.join(self.parts)})" if self.parts else ""
        return f"{self.platform} {self.where}: {self.what} {self.cell} {self.version}{extra}"


def beyond(items: Iterable, cell_of: Callable, version_of: Callable, keep: int) -> list:
    """The items older than the newest `keep` versions of their cell (items without a version are kept)."""
    keep = max(keep, 1)  # never the newest
    expired = []
    versioned = [item for item in items if Version.of(version_of(item))]
    ordered = sorted(versioned, key=cell_of)
    for _, grouped in itertools.groupby(ordered, key=cell_of):
        group = list(grouped)
        newest_first = sorted({Version.parse(version_of(item)) for item in group}, reverse=True)
        old = {str(v) for v in newest_first[keep:]}
        expired += [item for item in group if version_of(item) in old]
    return expired


_REGISTERED: dict[str, type[Platform]] = {}


class Platform:
    """One cloud platform (see the module's docstring); subclasses register themselves."""

    name: ClassVar[str]
    settings: ClassVar[type]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _REGISTERED[cls.name] = cls

    @staticmethod
    def upload(cell: Cell, files: CellFiles, manifest: Manifest, settings: Any, journal: Part | None = None) -> dict:
        raise NotImplementedError

    @staticmethod
    def expired(settings: Any, keep: int, architectures: Iterable[str]) -> list[Expired]:
        raise NotImplementedError


def registered() -> dict[str, type[Platform]]:
    """Every platform, by name, in the order of their modules' names."""
    for module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        importlib.import_module(f"{__name__}.{module}")
    return dict(sorted(_REGISTERED.items()))
