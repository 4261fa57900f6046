"""matrix.yaml: which images exist and how each is built.

The file is read once into immutable objects. Every mistake in it is reported
as one line naming the file, the key path and what was expected, e.g.::

    matrix.yaml: vendors.nocloud.disk_size: expected a size such as 2G or 512M, got 'huge'
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from tasks.errors import StageFailed
from tasks.model import settings
from tasks.model.arch import Arch, Format, Milestone
from tasks.model.settings import (
    BootTestSettings,
    BuildSettings,
    CiSettings,
    CompressSettings,
    PublishSettings,
    ReleaseSettings,
)

SIZE_PATTERN = re.compile(r"^[1-9][0-9]*[MG]$")
CLASS_PATTERN = re.compile(r"^[A-Z][A-Z0-9_]*$")
NAME_PATTERN = settings.NAME


class UnknownCell(StageFailed):
    """A cell named (on the command line, in a trigger) that the matrix does not make."""


class MatrixError(Exception):
    """A mistake in matrix.yaml, phrased for the person who made it."""

    def __init__(self, file: Path | str, path: str, message: str):
        super().__init__(f"{file}: {path}: {message}" if path else f"{file}: {message}")


@dataclass(frozen=True)
class Release:
    name: str  # codename: bookworm
    version: str  # what image names carry: "12", or "sid"

    @property
    def fai_class(self) -> str:
        return self.name.upper()


@dataclass(frozen=True)
class Architecture:
    name: str
    fai_classes: tuple[str, ...]
    firmware: tuple[str, ...]  # what the boot test boots its images through, in order

    @property
    def kind(self) -> Arch:
        """Everything else about it: qemu, firmware files, EFI names, platforms (tasks/model/arch.py)."""
        return Arch.named(self.name)


@dataclass(frozen=True)
class Vendor:
    name: str
    fai_classes: tuple[str, ...]
    disk_size: str
    formats: tuple[str, ...]
    # The boot test's milestone for this vendor's images, when not boot_test.until.
    boot_until: str | None = None


@dataclass(frozen=True)
class Cell:
    """One image of the matrix: a release, a vendor and an architecture."""

    release: Release
    vendor: Vendor
    arch: Architecture

    @property
    def name(self) -> str:
        return f"{self.release.name}-{self.vendor.name}-{self.arch.name}"

    @property
    def fai_classes(self) -> tuple[str, ...]:
        # Order matters to FAI: later classes win (disk_config, fcopy) and
        # their scripts run later. LAST cleans up after everyone else.
        # Combined names (EC2+ARM64, BOOKWORM+AZURE) let a file or script
        # belong to a vendor on one architecture or release only; they come
        # after the plain classes, so the narrower file wins.
        vendor = self.vendor.fai_classes
        combined = (
            *(f"{v}+{a}" for v in vendor for a in self.arch.fai_classes),
            *(f"{self.release.fai_class}+{v}" for v in vendor),
        )
        return (
            "DEBIAN",
            self.release.fai_class,
            *self.arch.fai_classes,
            *vendor,
            *combined,
            "LAST",
        )

    def image_name(self, version: str) -> str:
        """The public name, as Debian's cloud images are named (read back by IMAGE_NAME)."""
        return f"debian-{self.release.version}-{self.vendor.name}-{self.arch.name}-{version}"

    @property
    def base_name(self) -> str:
        """The shared base system every vendor of this release and arch starts from."""
        return f"{self.release.name}-{self.arch.name}"


# The tasks that run a known-failing cell's stages: xfail-<stage>:<cell> (tasks/graph.py).
XFAIL_PREFIX = "xfail-"

# Cell.image_name's parts, read back from a published file's name.
IMAGE_NAME = re.compile(
    r"debian-(?P<release_version>[a-z0-9.]+)-(?P<vendor>[a-z][a-z0-9]*)-(?P<arch>[a-z][a-z0-9]*)"
    r"-(?P<version>[0-9]{8}-[0-9]+)"
)


@dataclass(frozen=True)
class KnownFailure:
    """Cells expected to fail (a shell-style pattern over cell names), and why."""

    cells: str
    reason: str

    # What an xfail task's record says of the cell (tasks/graph.py writes it, tasks/summary.py reads it).
    FAILED_AS_EXPECTED: ClassVar[str] = "failed as expected"
    UNEXPECTED_SUCCESS: ClassVar[str] = "unexpected success"

    def matches(self, cell: Cell) -> bool:
        return fnmatch.fnmatchcase(cell.name, self.cells)


@dataclass(frozen=True)
class Deviation:
    """A deliberate difference from Debian's official images, and why."""

    what: str
    reason: str


@dataclass(frozen=True)
class Selector:
    """One entry of a tier: the product of its lists; a missing list means all."""

    releases: tuple[str, ...] | None = None
    vendors: tuple[str, ...] | None = None
    architectures: tuple[str, ...] | None = None

    def matches(self, cell: Cell) -> bool:
        return all(
            chosen is None or value in chosen
            for chosen, value in (
                (self.releases, cell.release.name),
                (self.vendors, cell.vendor.name),
                (self.architectures, cell.arch.name),
            )
        )


@dataclass(frozen=True)
class Matrix:
    path: Path
    releases: dict[str, Release]
    architectures: dict[str, Architecture]
    vendors: dict[str, Vendor]
    tiers: dict[str, tuple[Selector, ...]]
    known_failures: tuple[KnownFailure, ...] = ()
    deviations: tuple[Deviation, ...] = ()  # where the images differ from Debian's official ones
    build: BuildSettings = field(default_factory=BuildSettings)
    compress: CompressSettings = field(default_factory=CompressSettings)
    boot_test: BootTestSettings = field(default_factory=BootTestSettings)
    publish: PublishSettings = field(default_factory=PublishSettings)
    release: ReleaseSettings = field(default_factory=ReleaseSettings)
    ci: CiSettings = field(default_factory=CiSettings)

    # Made once per matrix: every task of the graph asks for them (a no-op run's time).
    @functools.cached_property
    def cells(self) -> tuple[Cell, ...]:
        return tuple(
            Cell(release, vendor, arch)
            for release in self.releases.values()
            for vendor in self.vendors.values()
            for arch in self.architectures.values()
        )

    @functools.cached_property
    def _cells_by_name(self) -> dict[str, Cell]:
        return {cell.name: cell for cell in self.cells}

    def cell(self, name: str) -> Cell:
        try:
            return self._cells_by_name[name]
        except KeyError:
            raise UnknownCell(
                f"{name!r} is no cell of {self.path.name} (cells are named <release>-<vendor>-<arch>, "
                f"such as {self.cells[0].name}; `doit list` names them all)"
            ) from None

    def tier(self, name: str) -> list[Cell]:
        if name not in self.tiers:
            raise MatrixError(self.path, "tiers", f"no tier named {name!r} (expected one of: {', '.join(self.tiers)})")
        selectors = self.tiers[name]
        return [cell for cell in self.cells if any(s.matches(cell) for s in selectors)]

    def known_failure(self, cell: Cell) -> KnownFailure | None:
        return next((k for k in self.known_failures if k.matches(cell)), None)

    def select(self, *patterns: str) -> list[Cell]:
        """Cells whose name matches any of the shell-style wildcards (bookworm-*-amd64)."""
        return [cell for cell in self.cells if any(fnmatch.fnmatchcase(cell.name, p) for p in patterns)]


# --------------------------------------------------------------------------
# Reading and validation


# libyaml's parser where PyYAML has it: every doit run reads the matrix.
class _UniqueKeyLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]  # a base chosen at run time
    """A YAML loader that refuses duplicate keys instead of keeping the last."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r} (line {mark.line + 1})", mark)
        seen.add(key)
    return yaml.constructor.SafeConstructor.construct_mapping(loader, node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


class _Reader:
    """Walks the parsed YAML, keeping the key path for error messages."""

    def __init__(self, file: Path | str):
        self.file = file

    def fail(self, path: str, message: str) -> MatrixError:
        return MatrixError(self.file, path, message)

    def mapping(self, value: Any, path: str, allowed: Iterable[str], required: Iterable[str] = ()) -> dict:
        if not isinstance(value, dict):
            raise self.fail(path, f"expected a mapping, got {_describe(value)}")
        allowed = list(allowed)
        for key in value:
            if key not in allowed:
                raise self.fail(_join(path, key), f"unknown key (expected one of: {', '.join(allowed)})")
        for key in required:
            if key not in value:
                raise self.fail(_join(path, key), "missing")
        return value

    def named_entries(self, value: Any, path: str, name_pattern: re.Pattern = NAME_PATTERN) -> dict:
        if not isinstance(value, dict) or not value:
            raise self.fail(path, f"expected a non-empty mapping of names, got {_describe(value)}")
        for key in value:
            if not isinstance(key, str) or not name_pattern.match(key):
                raise self.fail(_join(path, str(key)), "expected a lower-case name such as bookworm")
        return value

    def string(self, value: Any, path: str, pattern: re.Pattern | None = None, expected: str = "a string") -> str:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and pattern is None:
            value = str(value)  # version: 12 reads as a number
        if not isinstance(value, str) or not value or (pattern and not pattern.match(value)):
            raise self.fail(path, f"expected {expected}, got {_describe(value)}")
        return value

    def integer(self, value: Any, path: str, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(path, f"expected a whole number from {low} to {high}, got {_describe(value)}")
        return value

    def number(self, value: Any, path: str, low: float, high: float) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise self.fail(path, f"expected a number from {low:g} to {high:g}, got {_describe(value)}")
        return float(value)

    def choice(self, value: Any, path: str, choices: Iterable[str]) -> str:
        choices = list(choices)
        if value not in choices:
            raise self.fail(path, f"expected one of: {', '.join(choices)}, got {_describe(value)}")
        return value

    def string_list(self, value: Any, path: str, item: Callable[[Any, str], str]) -> tuple[str, ...]:
        if not isinstance(value, list) or not value:
            raise self.fail(path, f"expected a non-empty list, got {_describe(value)}")
        items = tuple(item(v, f"{path}[{i}]") for i, v in enumerate(value))
        for i, v in enumerate(items):
            if v in items[:i]:
                raise self.fail(f"{path}[{i}]", f"{v!r} is listed twice")
        return items

    def records(self, value: Any, path: str, fields: tuple[str, ...]) -> list[tuple[str, dict[str, str]]]:
        """A list of mappings whose fields are all required strings: (path, entry) each."""
        if not isinstance(value or [], list):
            raise self.fail(path, f"expected a list of {{{', '.join(fields)}}}, got {_describe(value)}")
        found = []
        for i, entry in enumerate(value or []):
            p = f"{path}[{i}]"
            entry = self.mapping(entry, p, list(fields), list(fields))
            found.append((p, {field: self.string(entry[field], f"{p}.{field}") for field in fields}))
        return found

    def fai_classes(self, value: Any, path: str) -> tuple[str, ...]:
        return self.string_list(
            value,
            path,
            lambda v, p: self.string(v, p, CLASS_PATTERN, "an upper-case FAI class name such as CLOUD"),
        )

    def settings(self, value: Any, path: str, cls: type):
        """A settings section (tasks/model/settings.py): every key optional, defaults from the dataclass."""
        if value is None:
            return cls()
        self.mapping(value, path, settings.keys(cls))
        return settings.parse(self, value, cls, path)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _describe(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, (dict, list)):
        return f"a {'mapping' if isinstance(value, dict) else 'list'}"
    return repr(value)


def load(path: Path | str) -> Matrix:
    """Read and validate a matrix file; raise MatrixError on any mistake."""
    path = Path(path)
    display = str(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise MatrixError(display, "", f"cannot read: {error.strerror}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise MatrixError(display, where, f"invalid YAML: {problem}") from None
    return parse(data, display, path)


def parse(data: Any, display: str, path: Path | None = None) -> Matrix:
    r = _Reader(display)
    top = r.mapping(
        data,
        "",
        [
            "releases",
            "architectures",
            "vendors",
            "tiers",
            "known_failures",
            "deviations",
            "build",
            "compress",
            "boot_test",
            "publish",
            "release",
            "ci",
        ],
        ["releases", "architectures", "vendors", "tiers"],
    )

    releases = {}
    for name, entry in r.named_entries(top["releases"], "releases").items():
        p = f"releases.{name}"
        entry = r.mapping(entry, p, ["version"], ["version"])
        releases[name] = Release(name, r.string(entry["version"], f"{p}.version"))

    architectures = {}
    for name, entry in r.named_entries(top["architectures"], "architectures").items():
        p = f"architectures.{name}"
        if name not in Arch.names():
            raise r.fail(p, f"unsupported architecture (expected one of: {', '.join(Arch.names())})")
        entry = r.mapping(entry, p, ["fai_classes", "firmware"], ["fai_classes", "firmware"])
        supported = Arch.named(name).firmware
        architectures[name] = Architecture(
            name,
            r.fai_classes(entry["fai_classes"], f"{p}.fai_classes"),
            r.string_list(entry["firmware"], f"{p}.firmware", functools.partial(_one_of, r, supported)),
        )

    vendors = {}
    for name, entry in r.named_entries(top["vendors"], "vendors").items():
        p = f"vendors.{name}"
        entry = r.mapping(
            entry, p, ["fai_classes", "disk_size", "formats", "boot_until"], ["fai_classes", "disk_size", "formats"]
        )
        vendors[name] = Vendor(
            name,
            r.fai_classes(entry["fai_classes"], f"{p}.fai_classes"),
            r.string(entry["disk_size"], f"{p}.disk_size", SIZE_PATTERN, "a size such as 2G or 512M"),
            r.string_list(entry["formats"], f"{p}.formats", lambda v, q: r.choice(v, q, list(Format))),
            r.choice(entry["boot_until"], f"{p}.boot_until", list(Milestone)) if "boot_until" in entry else None,
        )

    tiers = {}
    known = {"releases": releases, "vendors": vendors, "architectures": architectures}
    for name, entries in r.named_entries(top["tiers"], "tiers").items():
        p = f"tiers.{name}"
        if not isinstance(entries, list) or not entries:
            raise r.fail(p, f"expected a non-empty list of selections, got {_describe(entries)}")
        selectors = []
        for i, entry in enumerate(entries):
            q = f"{p}[{i}]"
            entry = r.mapping(entry or {}, q, known)
            chosen = {}
            for axis, names in entry.items():
                chosen[axis] = r.string_list(names, f"{q}.{axis}", functools.partial(_known_name_of, r, axis, known))
            selectors.append(Selector(**chosen))
        tiers[name] = tuple(selectors)
    if "push" not in tiers:
        raise r.fail("tiers.push", "missing (the tier built by default)")

    cell_names = [f"{rel}-{ven}-{arch}" for rel in releases for ven in vendors for arch in architectures]
    known_failures = []
    for p, entry in r.records(top.get("known_failures"), "known_failures", ("cells", "reason")):
        pattern = entry["cells"]
        if not fnmatch.filter(cell_names, pattern):
            raise r.fail(f"{p}.cells", f"{pattern!r} matches no cell (cells are named like {cell_names[0]})")
        known_failures.append(KnownFailure(pattern, entry["reason"]))
    deviations = [
        Deviation(entry["what"], entry["reason"])
        for _, entry in r.records(top.get("deviations"), "deviations", ("what", "reason"))
    ]

    matrix = Matrix(
        path=(path or Path(display)).resolve(),
        releases=releases,
        architectures=architectures,
        vendors=vendors,
        tiers=tiers,
        known_failures=tuple(known_failures),
        deviations=tuple(deviations),
        build=r.settings(top.get("build"), "build", BuildSettings),
        compress=r.settings(top.get("compress"), "compress", CompressSettings),
        boot_test=r.settings(top.get("boot_test"), "boot_test", BootTestSettings),
        publish=r.settings(top.get("publish"), "publish", PublishSettings),
        release=_release_settings(r, top.get("release"), vendors),
        ci=_ci_settings(r, top.get("ci"), architectures, tiers),
    )
    return matrix


def _release_settings(r: _Reader, value: Any, vendors: dict) -> ReleaseSettings:
    entry = dict(r.mapping(value or {}, "release", [*settings.keys(ReleaseSettings), "platforms"]))
    given_platforms = entry.pop("platforms", None) or {}
    release = settings.parse(r, entry, ReleaseSettings, "release")
    if "instance_test" in entry:
        for index, vendor in enumerate(release.instance_test):
            _known_name(r, vendor, f"release.instance_test[{index}]", "vendors", vendors)
    else:  # the default's vendors this matrix has
        release = dataclasses.replace(release, instance_test=tuple(v for v in release.instance_test if v in vendors))
    sections = settings.platform_sections() if given_platforms else {}
    platforms = {}
    for name, given in r.mapping(given_platforms, "release.platforms", sections).items():
        p = f"release.platforms.{name}"
        if name not in vendors:
            raise r.fail(p, f"no vendor named {name!r} in this matrix")
        section = sections[name]
        given = r.mapping(given, p, settings.keys(section), settings.required_settings(section))
        platforms[name] = settings.parse(r, given, section, p)
    return dataclasses.replace(release, platforms=platforms)


def _ci_settings(r: _Reader, value: Any, architectures: dict, tiers: dict) -> CiSettings:
    ci = r.settings(value, "ci", CiSettings)
    for arch in ci.build_tags:
        _known_name(r, arch, f"ci.build_tags.{arch}", "architectures", architectures)
    for source, tier in ci.tiers.items():
        if source not in ("push", "schedule"):
            raise r.fail(f"ci.tiers.{source}", "unknown key (expected one of: push, schedule)")
        if tier not in tiers:
            raise r.fail(f"ci.tiers.{source}", f"no tier named {_describe(tier)} (expected one of: {', '.join(tiers)})")
    return ci


def _one_of(r: _Reader, choices: Iterable[str], value: Any, path: str) -> str:
    return r.choice(value, path, choices)


def _known_name_of(r: _Reader, axis: str, known: dict, value: Any, path: str) -> str:
    return _known_name(r, value, path, axis, known[axis])


def _known_name(r: _Reader, value: Any, path: str, axis: str, known: dict) -> str:
    singular = {"releases": "release", "vendors": "vendor", "architectures": "architecture"}[axis]
    if value not in known:
        raise r.fail(path, f"unknown {singular} {_describe(value)} (expected one of: {', '.join(known)})")
    return value
