"""One run's plan: the matrix plus the options given on the doit command line.

Options are doit variables (``doit name=value ...``):

=========  ===============================================  =====================
option     meaning                                          default
=========  ===============================================  =====================
matrix     the matrix file                                  matrix.yaml
tier       which cells the stage groups and default run     push
workdir    where images are built                           build
storage    where images are published                       publish.storage
version    the version published images get: YYYYMMDD-N    the version recorded
           (tasks/model/version.py)                         by the cell's build:
                                                            the UTC start of the
                                                            run that built it,
                                                            YYYYMMDD-HHMM
xz_level   override compress.xz_level                       from the matrix
step_cache `no`: builds make every step and keep none        yes
           (tasks/stages/stepcache.py); for builds in a
           work directory that is thrown away (CI jobs)
source     for `doit ci`: the pipeline's source (push,      push
           schedule, web, api, trigger, ...)
cells      for `doit ci`: cell patterns to build instead    the source's tier
           of a tier ("trixie-*-arm64 sid-ec2-*")
confirm    `yes` lets `doit release:<cell>` release         no
           (README.md, "Release")
protected  for `doit ci`: the pipeline's ref is protected   no
           (GitLab's CI_COMMIT_REF_PROTECTED): it may
           release
builder    for `doit ci`: the builder image the jobs run    ci.image, tagged with
           in, pinned by digest (<image>@sha256:<hex>)      the digest of its
                                                            inputs (tasks/builder)
left,      for `doit compare`: two image facts reports,     (none)
right      each a cell name, a facts.json or a manifest;
           for `doit changes`: two images, each a cell
           (its build here) or <cell>@<version> (storage)
image      for `doit verify`: <cell>[@<version>] in         (none)
           storage (no version: the newest daily)
key        for `doit verify`: the signer's public key file  (none)
=========  ===============================================  =====================

Options that are yes or no take true/false and 1/0 alike (GitLab's variables
say true and false); an empty value is the default, anything else an error.
Relative paths are relative to the directory holding dodo.py.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tasks.model import matrix as matrix_module
from tasks.model.matrix import Cell, Matrix, MatrixError
from tasks.model.version import NotAVersion, Version
from tasks.storage import Location

OPTIONS = (
    "matrix",
    "tier",
    "workdir",
    "storage",
    "version",
    "xz_level",
    "step_cache",
    "source",
    "cells",
    "confirm",
    "left",
    "right",
    "image",
    "key",
    "protected",
    "builder",
)
# An image named by its manifest's digest: what it is can never change (builder=).
PINNED_IMAGE = re.compile(r"[^@\s]+@sha256:[0-9a-f]{64}")
DEFAULT_WORKDIR = "build"
_YES, _NO = ("yes", "true", "1"), ("no", "false", "0")


@dataclass(frozen=True)
class Plan:
    matrix: Matrix
    root: Path  # the project's directory (dodo.py's): relative paths start here
    workdir: Path
    config_space: Path
    storage: Location
    build_version: str  # what a build records: version= or the run's start
    version: str | None  # version= as given; it overrides what builds recorded
    tier: str
    step_cache: bool = True  # step_cache=no: builds keep and restore no step (a work directory thrown away)
    source: str = "push"  # for `doit ci`
    cells: str | None = None  # for `doit ci`
    protected: bool = False  # for `doit ci`: the pipeline's ref is protected (CI_COMMIT_REF_PROTECTED): it may release
    builder: str | None = None  # for `doit ci`: the builder image, pinned by digest (PINNED_IMAGE)
    confirmed: bool = False  # confirm=yes: releases may be made
    compare: tuple[str | None, str | None] = (None, None)  # left=, right= for `doit compare`, `doit changes`
    verify: tuple[str | None, str | None] = (None, None)  # image=, key= for `doit verify`

    @property
    def tier_cells(self) -> list[Cell]:
        return self.matrix.tier(self.tier)

    @property
    def kvm_verdicts(self) -> Path:
        """Whether KVM worked here, per architecture and firmware (tasks/stages/accel.py)."""
        return self.workdir / ".kvm-verdicts.json"

    @property
    def run_summary(self) -> Path:
        """What the last run that executed tasks did to each cell (tasks/summary.py)."""
        return self.workdir / "run-summary.json"

    @property
    def cpu_slots(self) -> Path:
        """Where stages running in parallel share out the cores (tasks/system/cpu.py)."""
        return self.workdir / ".cpu"


def from_options(root: Path, get: Callable[[str], str | None], given: Iterable[str] = ()) -> Plan:
    """Build the plan from doit variables; raise MatrixError on a bad option.

    given: the names of the options on the command line, to refuse unknown ones.
    """
    for name in given:
        if name not in OPTIONS:
            raise MatrixError("command line", name, f"unknown option (expected one of: {', '.join(OPTIONS)})")
    matrix_path = root / (get("matrix") or "matrix.yaml")
    matrix = matrix_module.load(matrix_path)
    tier = get("tier") or "push"
    matrix.tier(tier)  # fails with the list of tiers when unknown

    xz_level = get("xz_level")
    if xz_level is not None:
        if not xz_level.isdigit() or not 0 <= int(xz_level) <= 9:
            raise MatrixError("command line", "xz_level", f"expected a whole number from 0 to 9, got {xz_level!r}")
        matrix = dataclasses.replace(matrix, compress=dataclasses.replace(matrix.compress, xz_level=int(xz_level)))

    version = get("version") or None
    if version is not None:
        try:
            Version.parse(version)
        except NotAVersion as error:
            raise MatrixError("command line", "version", str(error)) from None

    storage_option = get("storage")
    try:
        storage = Location.parse(storage_option or matrix.publish.storage, root, query_allowed=bool(storage_option))
    except ValueError as error:
        if storage_option:
            raise MatrixError("command line", "storage", str(error)) from None
        raise MatrixError(matrix_path, "publish.storage", str(error)) from None

    builder = get("builder") or None
    if builder is not None and not PINNED_IMAGE.fullmatch(builder):
        raise MatrixError(
            "command line",
            "builder",
            f"expected an image pinned by digest, <image>@sha256:<64 hex digits>, got {builder!r}",
        )

    config_space = root / "fai_config"
    _check_classes(matrix, matrix_path, config_space)

    return Plan(
        matrix=matrix,
        root=root,
        workdir=(root / (get("workdir") or DEFAULT_WORKDIR)).resolve(),
        config_space=config_space,
        storage=storage,
        build_version=version or str(Version.of_run(datetime.now(UTC))),
        version=version,
        tier=tier,
        step_cache=_yes_or_no(get, "step_cache", default=True),
        source=get("source") or "push",
        cells=get("cells") or None,
        protected=_yes_or_no(get, "protected", default=False),
        builder=builder,
        confirmed=_yes_or_no(get, "confirm", default=False),
        compare=(get("left"), get("right")),
        verify=(get("image"), get("key")),
    )


def _yes_or_no(get: Callable[[str], str | None], name: str, default: bool) -> bool:
    value = get(name)
    if not value:
        return default
    if value.lower() in _YES:
        return True
    if value.lower() in _NO:
        return False
    raise MatrixError("command line", name, f"expected yes or no, got {value!r}")


def _check_classes(matrix: Matrix, matrix_path: Path, config_space: Path) -> None:
    """Every FAI class the matrix names has files in the config space: a
    misspelt class would otherwise build an image without them, silently."""
    from tasks.stages import faiconfig  # the config space's reader; the model does not import stages at load

    if not config_space.is_dir():
        return  # a plan without a config space (tests of the model alone)
    defined = faiconfig.defined_classes(config_space)
    named: list[tuple[str, tuple[str, ...]]] = [
        *((f"architectures.{name}", arch.fai_classes) for name, arch in matrix.architectures.items()),
        *((f"vendors.{name}", vendor.fai_classes) for name, vendor in matrix.vendors.items()),
    ]
    for key, classes in named:
        for index, fai_class in enumerate(classes):
            if fai_class not in defined:
                raise MatrixError(
                    matrix_path,
                    f"{key}.fai_classes[{index}]",
                    f"no file of the config space ({config_space.name}/) belongs to class {fai_class!r}",
                )
