"""One run's plan: the matrix plus the options given on the doit command line
(``doit name=value ...``; each declared in tasks/model/options.py).

Relative paths are relative to the directory holding dodo.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tasks.model import matrix as matrix_module
from tasks.model import options
from tasks.model.matrix import Cell, Matrix, MatrixError
from tasks.model.version import Version
from tasks.storage import Backend, Location, RetryPolicy

PINNED_IMAGE = options.PINNED_IMAGE
DEFAULT_WORKDIR = options.BY_NAME["workdir"].default


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

    def open_storage(self) -> Backend:
        """The storage's backend, retrying as publish.retries and publish.retry_delay say."""
        return self.storage.open(RetryPolicy(self.matrix.publish.retries, self.matrix.publish.retry_delay))

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
    option = options.read(get, given)
    matrix_path = root / option["matrix"]
    matrix = matrix_module.load(matrix_path)
    matrix.tier(option["tier"])  # fails with the list of tiers when unknown
    if option["xz_level"] is not None:
        matrix = dataclasses.replace(matrix, compress=dataclasses.replace(matrix.compress, xz_level=option["xz_level"]))

    storage_option = option["storage"]
    try:
        storage = Location.parse(storage_option or matrix.publish.storage, root, query_allowed=bool(storage_option))
    except ValueError as error:
        if storage_option:
            raise MatrixError(options.COMMAND_LINE, "storage", str(error)) from None
        raise MatrixError(matrix_path, "publish.storage", str(error)) from None

    config_space = root / "fai_config"
    _check_classes(matrix, matrix_path, config_space)

    version = option["version"]
    return Plan(
        matrix=matrix,
        root=root,
        workdir=(root / option["workdir"]).resolve(),
        config_space=config_space,
        storage=storage,
        build_version=version or str(Version.of_run(datetime.now(UTC))),
        version=version,
        tier=option["tier"],
        step_cache=option["step_cache"],
        source=option["source"],
        cells=option["cells"],
        protected=option["protected"],
        builder=option["builder"],
        confirmed=option["confirm"],
        compare=(option["left"], option["right"]),
        verify=(option["image"], option["key"]),
    )


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
