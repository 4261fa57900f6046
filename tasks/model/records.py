"""The records stages hand each other, typed and versioned.

build-info.json (the build stage, for the manifest), boottest.json (the boot
test, for the manifest) and published.json (the publish stage's receipt,
for its own up-to-date check) are each a dataclass here: written with
to_json, read back with read, which refuses a file that is not JSON, not
text, of another kind or version, or one that lacks a field or holds one of
another type, with one line naming the file. The manifest (manifest.json) is
one too, though it is also the public document users read: its JSON keeps
the "schema" number it always had.

A record that cannot be read counts as missing: the stage that makes it runs
again (RecordsReadable, an up-to-date check of the graph), and says why.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from tasks.errors import StageFailed


class RecordError(StageFailed):
    pass


R = TypeVar("R", bound="Record")


@dataclass(frozen=True)
class Record:
    KIND: ClassVar[str]
    VERSION: ClassVar[int] = 1

    @classmethod
    def tag(cls) -> str:
        return f"{cls.KIND}/{cls.VERSION}"

    def to_json(self) -> dict[str, Any]:
        return {"record": self.tag(), **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls: type[R], data: Any, source: str = "") -> R:
        where = f"{source}: " if source else ""
        if not isinstance(data, dict):
            raise RecordError(f"{where}expected a {cls.KIND} record, got {type(data).__name__}")
        # Files written before records were versioned carry no tag: version 1.
        tag = data.get("record", f"{cls.KIND}/1")
        if tag != cls.tag():
            raise RecordError(f"{where}a {tag} record, expected {cls.tag()}: make it again with this version")
        names = {f.name for f in dataclasses.fields(cls)}
        required = {
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
        missing = sorted(required - data.keys())
        if missing:
            raise RecordError(f"{where}the {cls.KIND} record lacks {', '.join(missing)}")
        hints = _hints(cls)
        for key in sorted(names & data.keys()):
            if not _is(data[key], hints[key]):
                raise RecordError(f"{where}{key}: expected {_name(hints[key])}, got {type(data[key]).__name__}")
        return cls(**{key: value for key, value in data.items() if key in names})

    @classmethod
    def read(cls: type[R], path: Path) -> R:
        return cls.from_json(read_document(path), str(path))


def read_document(path: Path) -> Any:
    """A JSON file's content; RecordError when it is missing, not text or not JSON."""
    try:
        return json.loads(path.read_bytes().decode())
    except FileNotFoundError:
        raise RecordError(f"{path}: missing", log=None) from None
    except UnicodeDecodeError:
        raise RecordError(f"{path}: not text (damaged?)") from None
    except json.JSONDecodeError as error:
        raise RecordError(f"{path}: not JSON ({error})") from None


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _is(value: Any, hint: Any) -> bool:
    """Whether a JSON value has the shape of a field's type (containers by their kind only)."""
    if hint is Any:
        return True
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return any(_is(value, member) for member in typing.get_args(hint))
    kind = typing.get_origin(hint) or hint
    if kind is type(None):
        return value is None
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _name(hint: Any) -> str:
    return str(hint).replace("typing.", "") if typing.get_origin(hint) or hint is Any else hint.__name__


def problem(path: Path, kind: type[Record] | None) -> str | None:
    """Why the record at path cannot be read (None when it reads, or is missing: doit makes those anyway).
    kind None: any JSON object (the SBOMs, the facts, the provenance statement)."""
    if not path.exists():
        return None
    try:
        if kind is None:
            if not isinstance(read_document(path), dict):
                return f"{path}: not a JSON object"
        else:
            kind.read(path)
    except RecordError as error:
        return str(error)
    return None


class RecordsReadable:
    """doit up-to-date check: the stage's records all read (a damaged one counts as missing).

    Cheap on a no-op run: a record is read again only when its size or time
    differ from what they were when the stage last made it (kept among the
    task's saved values)."""

    KEY = "_records_"

    def __init__(self, records: Sequence[tuple[Path, type[Record] | None]]):
        self.records = list(records)

    def _stamps(self) -> dict[str, list[int]]:
        """Size and time of each record, by its name (a stage's records have names of their own, and the
        saved values stay true of a work directory moved elsewhere)."""
        stamps = {}
        for path, _ in self.records:
            try:
                st = os.stat(path)
            except OSError:
                continue
            stamps[path.name] = [st.st_mtime_ns, st.st_size]
        return stamps

    def configure_task(self, task) -> None:
        task.value_savers.append(lambda: {self.KEY: self._stamps()})

    def __call__(self, task, values) -> bool:
        known = values.get(self.KEY) or {}
        stamps = self._stamps()
        for path, kind in self.records:
            stamp = stamps.get(path.name)
            if stamp is None or known.get(path.name) == stamp:
                continue  # missing (doit makes it anyway), or as the stage left it
            if problem(path, kind) is not None:
                return False
        return True


def note_unreadable(records: Sequence[tuple[Path, type[Record] | None]]) -> None:
    """A doit action run before a stage: say which of its records it makes again, and why."""
    for path, kind in records:
        why = problem(path, kind)
        if why:
            print(f"{why}: made again", flush=True)


@dataclass(frozen=True)
class BuildInfo(Record):
    """build-info.json: how and when a cell's image was built."""

    KIND: ClassVar[str] = "build-info"
    VERSION: ClassVar[int] = 2  # 2: what the provenance needs (inputs, Release files, times)

    cell: str
    release: str
    release_version: str
    vendor: str
    arch: str
    version: str
    image_name: str
    fai_classes: list[str]
    disk_size: str
    build_started: str
    build_seconds: float
    builder: dict[str, str]
    mirror: str
    source_date_epoch: int
    settings: dict[str, Any]  # what shaped the image besides the config space (fai.build_config)
    inputs: dict[str, str]  # project_commit, config_space_sha256, base_sha256
    apt_releases: list[dict[str, str]]  # name, sha256, date of each Release file apt used
    build_finished: str
    # Seconds in each of FAI's tasks, hooks and scripts, in order (fai.PhaseClock).
    phases: dict[str, float] = field(default_factory=dict)
    # The disk assembly's tools, package -> version (tasks/system/toolstree.py): the disk's bytes depend on them.
    tools: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BaseShares(Record):
    """<base>.shares.json: what a shared base installed for all its images alike, and from what
    (tasks/stages/baseshare.py): its up-to-date check compares the packages, not the lists."""

    KIND: ClassVar[str] = "base-shares"

    include: list[str]  # the packages every image names (base.BaseContent.include)
    selections: list[list[str]]  # each image's own packages beyond them
    shared: list[str]  # what apt installs for every selection alike: the base holds it
    source_date_epoch: int  # the archive's time (the newest Date of its suites' InRelease)


@dataclass(frozen=True)
class BootRecord(Record):
    """boottest.json: the verdict of every boot of a cell's image."""

    KIND: ClassVar[str] = "boottest"

    cell: str
    verdict: str
    passed: bool
    boots: list[dict[str, Any]]  # each with its vcpus
    side_by_side: int = 1  # the most boots that ran at once


@dataclass(frozen=True)
class PublishReceipt(Record):
    """published.json: where the last publication of a cell went, and what it wrote."""

    KIND: ClassVar[str] = "published"
    VERSION: ClassVar[int] = 2  # 2: SBOMs, provenance, changes, signature

    storage: str
    directory: str
    files: dict[str, str] = field(default_factory=dict)  # public name -> sha512
    sizes: dict[str, int] = field(default_factory=dict)  # public name -> bytes
    signed_by: str | None = None  # the fingerprint that signed SHA512SUMS, None when unsigned


@dataclass(frozen=True)
class ReleaseRecord(Record):
    """release.json: what the release of a cell did (tasks/release/step.py)."""

    KIND: ClassVar[str] = "release"

    cell: str
    name: str  # the image's public name
    version: str
    started: str
    published: dict[str, Any]  # storage, directory, files (public name -> sha512)
    instance_test: dict[str, Any] | None = None  # the instance test's result, when the vendor has one
    platforms: list[dict[str, Any]] = field(default_factory=list)  # what each platform upload made
    notified: list[str] = field(default_factory=list)  # mail to ..., webhook


@dataclass(frozen=True)
class Manifest(Record):
    """manifest.json: a built and tested image, as users read it (tasks/stages/manifest.py)."""

    KIND: ClassVar[str] = "manifest"
    VERSION: ClassVar[int] = 4  # 2: the image's facts; 3: its SBOMs, its reproducibility; 4: its raw disk

    name: str
    release: dict[str, str]  # codename, version
    vendor: str
    arch: str
    version: str
    build: dict[str, Any]
    artifacts: list[dict[str, Any]]  # name, format, file, size, sha512
    boot_test: dict[str, Any]
    packages: list[dict[str, str]]
    facts: dict[str, Any]
    sboms: list[dict[str, Any]]  # name, format, size, sha512
    reproducibility: dict[str, Any] | None  # the verdict of `doit reproduce`, when it ran
    # The raw disk every artifact holds (file, size, sha512): a rebuild from the same
    # inputs gives these very bytes (tasks/stages/diskassembly.py).
    disk: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"schema": self.VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, data: Any, source: str = "") -> Manifest:
        if isinstance(data, dict) and "schema" in data:
            schema = data["schema"]
            data = {key: value for key, value in data.items() if key != "schema"}
            data["record"] = f"{cls.KIND}/{schema}"
        return super().from_json(data, source)
