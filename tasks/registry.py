"""The stage registry: every stage of the graph, once.

A Stage declares what it runs on (each shared base, or each cell), what it
reads and writes, which configuration shapes its output, its action, and
where it runs in a CI pipeline. Everything else is derived from STAGES:

    tasks/graph.py   the doit tasks (``doit list``, the groups, xfail-*)
    dodo.py          one task_<stage> per stage
    tasks/ci.py      the jobs of the GitLab CI child pipeline
    tools/benchmark.py, the run summary and the tests

so adding a stage here is enough for it to appear in all of them. Actions
receive a typed context (BaseContext, CellContext), never positional lists.
"""

from __future__ import annotations

import dataclasses
import enum
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from tasks.model.layout import CellFiles
from tasks.model.matrix import Architecture, Cell, Release
from tasks.model.plan import Plan
from tasks.model.records import BaseShares, BootRecord, BuildInfo, Manifest, PublishReceipt, Record, ReleaseRecord
from tasks.stages import base, boottest, compress, fai, faiconfig, manifest, provenance, publish, sbom, stepcache, twins
from tasks.system import signing, toolstree


class Scope(enum.Enum):
    """What one sub-task of a stage stands for."""

    BASE = "base"  # a release and architecture: base:bookworm-amd64
    CELL = "cell"  # a cell: build:bookworm-nocloud-amd64


class CiJob(enum.Enum):
    """The job of the CI child pipeline that runs a stage (tasks/ci.py)."""

    BASE = "base"  # base:<release>-<arch>, on a build runner
    IMAGE = "image"  # image:<cell>, on a build runner: every IMAGE stage, in order
    UPLOAD = "upload"  # upload:<release>, scheduled or CELLS pipelines: the dailies
    RELEASE = "release"  # release:<release>, manual


@dataclass(frozen=True)
class BaseContext:
    """What a base stage's action gets: the plan and one shared base."""

    plan: Plan
    release: Release
    arch: Architecture
    files: base.BaseFiles
    content: base.BaseContent

    @property
    def name(self) -> str:
        return self.files.name


@dataclass(frozen=True)
class CellContext:
    """What a cell stage's action gets: the plan, the cell and where its files live."""

    plan: Plan
    cell: Cell
    files: CellFiles

    @property
    def name(self) -> str:
        return self.cell.name


Context = TypeVar("Context", BaseContext, CellContext)


@dataclass(frozen=True)
class Stage(Generic[Context]):
    name: str
    doc: str  # what the stage does: `doit list` shows it
    group_doc: str  # what its group task does, for the chosen tier
    scope: Scope
    ci_job: CiJob
    action: Callable[[Context], Any]
    describe: Callable[[Context], str]  # one sub-task's doc
    inputs: Callable[[Context], Sequence[Path]] = lambda ctx: ()
    outputs: Callable[[Context], Sequence[Path]] = lambda ctx: ()
    # Configuration that shapes the output: a change makes the sub-task stale.
    config: Callable[[Context], dict] = lambda ctx: {}
    # Further up-to-date checks: doit's (callable, args) pairs, or booleans.
    checks: Callable[[Context], list] = lambda ctx: []
    # The outputs that are records other stages read (None: any JSON object): one that does not read
    # makes the stage run again (records.RecordsReadable).
    records: Callable[[Context], Sequence[tuple[Path, type[Record] | None]]] = lambda ctx: ()
    # Run by name only, never by a group or the default run (the release).
    manual: bool = False
    # Days a sub-task's output stays up to date, for outputs that age (the shared bases).
    max_age_days: Callable[[Context], int | None] = lambda ctx: None

    def contexts(self, plan: Plan) -> list:
        """One context per sub-task, in the matrix's order."""
        if self.scope is Scope.BASE:
            return [base_context(plan, cell) for cell in _one_cell_per_base(plan.matrix.cells)]
        return [cell_context(plan, cell) for cell in plan.matrix.cells]

    def tier_names(self, plan: Plan) -> list[str]:
        """The sub-tasks the group task of the chosen tier runs."""
        if self.scope is Scope.BASE:
            return sorted({cell.base_name for cell in plan.tier_cells})
        return [cell.name for cell in plan.tier_cells]


def _one_cell_per_base(cells: Sequence[Cell]) -> list[Cell]:
    return list({cell.base_name: cell for cell in cells}.values())


def base_context(plan: Plan, cell: Cell) -> BaseContext:
    # Every image of the base in the matrix, whatever the tier: the base is the same for all tiers.
    images = [image.fai_classes for image in plan.matrix.cells if image.base_name == cell.base_name]
    content = base.BaseContent.of(plan.config_space, cell.release, cell.arch, plan.matrix.build, images)
    return BaseContext(plan, cell.release, cell.arch, base.BaseFiles.of(plan.workdir, cell.base_name), content)


def cell_context(plan: Plan, cell: Cell, files: CellFiles | None = None) -> CellContext:
    return CellContext(plan, cell, files or CellFiles.of(plan.workdir, cell))


# --------------------------------------------------------------------------
# The stages' declarations


def _base_action(ctx: BaseContext) -> None:
    base.build(
        ctx.release,
        ctx.arch.name,
        ctx.files,
        ctx.plan.matrix.build,
        base.package_cache(ctx.plan.workdir),
        ctx.plan.cpu_slots,
        ctx.content,
    )


BASE = Stage[BaseContext](
    name="base",
    doc="debootstrap the base system each release and architecture share",
    group_doc="the shared bases",
    scope=Scope.BASE,
    ci_job=CiJob.BASE,
    action=_base_action,
    describe=lambda ctx: f"debootstrap {ctx.release.name} for {ctx.arch.name}: the base of its images",
    inputs=lambda ctx: (base.UPGRADE_SCRIPT,),
    outputs=lambda ctx: (ctx.files.tarball, ctx.files.shares, ctx.files.log),
    config=lambda ctx: base.base_config(ctx.release, ctx.arch.name, ctx.plan.matrix.build, ctx.content),
    checks=lambda ctx: [base.shares_current(ctx.files, ctx.release, ctx.arch.name, ctx.plan.matrix.build, ctx.content)],
    records=lambda ctx: ((ctx.files.shares, BaseShares),),
    max_age_days=lambda ctx: ctx.plan.matrix.build.base_max_age_days,
)


def build_inputs(ctx: CellContext) -> fai.BuildInputs:
    plan = ctx.plan
    tarball = base.BaseFiles.of(plan.workdir, ctx.cell.base_name).tarball
    return fai.BuildInputs(
        plan.config_space,
        tarball,
        base.package_cache(plan.workdir),
        stepcache.directory(plan.workdir, ctx.cell.name) if plan.step_cache else None,
        plan.build_version,
        plan.cpu_slots,
        toolstree.tree_dir(plan.workdir),
        twins.directory(plan.workdir),
    )


def _build_action(ctx: CellContext) -> None:
    fai.build(ctx.cell, ctx.files, ctx.plan.matrix.build, build_inputs(ctx))


BUILD = Stage[CellContext](
    name="build",
    doc="build raw images: FAI into a directory, the disk assembled from files",
    group_doc="build the raw images",
    scope=Scope.CELL,
    ci_job=CiJob.IMAGE,
    action=_build_action,
    describe=lambda ctx: f"build {ctx.cell.name} with FAI",
    inputs=lambda ctx: (
        build_inputs(ctx).base,
        *faiconfig.selected_files(ctx.plan.config_space, ctx.cell.fai_classes),
        *fai.IN_BUILD_MODULES,
    ),
    outputs=lambda ctx: (ctx.files.raw, *ctx.files.build_records),
    config=lambda ctx: fai.build_config(ctx.cell, ctx.plan.matrix.build),
    records=lambda ctx: ((ctx.files.build_info, BuildInfo), (ctx.files.facts, None)),
)


def _sbom_action(ctx: CellContext) -> None:
    sbom.generate(ctx.cell, ctx.files, ctx.plan.version)


SBOM = Stage[CellContext](
    name="sbom",
    doc="describe each image's packages as SPDX and CycloneDX SBOMs (debsbom)",
    group_doc="write the SBOMs",
    scope=Scope.CELL,
    ci_job=CiJob.IMAGE,
    action=_sbom_action,
    describe=lambda ctx: f"write the SBOMs of {ctx.cell.name} (SPDX, CycloneDX)",
    inputs=lambda ctx: (ctx.files.dpkg_status, ctx.files.build_info),
    outputs=lambda ctx: ctx.files.sboms,
    config=lambda ctx: {**sbom.sbom_config(ctx.cell), "version": ctx.plan.version},
    records=lambda ctx: tuple((path, None) for path in ctx.files.sboms),
)


def _compress_action(ctx: CellContext) -> None:
    compress.compress(ctx.cell, ctx.files, ctx.plan.matrix.compress, ctx.plan.cpu_slots)


COMPRESS = Stage[CellContext](
    name="compress",
    doc="compress raw images (sparse tar.xz, qcow2)",
    group_doc="compress the images",
    scope=Scope.CELL,
    ci_job=CiJob.IMAGE,
    action=_compress_action,
    describe=lambda ctx: f"compress {ctx.cell.name}: {', '.join(ctx.cell.vendor.formats)}",
    inputs=lambda ctx: (ctx.files.raw,),
    outputs=lambda ctx: ctx.files.artifacts,
    config=lambda ctx: compress.compress_config(ctx.cell, ctx.plan.matrix.compress),
)


def _boot_settings(ctx: CellContext):
    return boottest.settings_for(ctx.cell, ctx.plan.matrix.boot_test)


def _boottest_action(ctx: CellContext) -> None:
    boottest.boot_test(ctx.cell, ctx.files, _boot_settings(ctx), ctx.plan.cpu_slots, ctx.plan.kvm_verdicts)


BOOTTEST = Stage[CellContext](
    name="boottest",
    doc="boot images in qemu and read the serial console",
    group_doc="boot-test the images",
    scope=Scope.CELL,
    ci_job=CiJob.IMAGE,
    action=_boottest_action,
    describe=lambda ctx: (
        f"boot {ctx.cell.name} in qemu ({', '.join(ctx.cell.arch.firmware)}) until {_boot_settings(ctx).until}"
    ),
    inputs=lambda ctx: (ctx.files.raw,),
    outputs=lambda ctx: (*ctx.files.boot_logs, ctx.files.boot_result),
    config=lambda ctx: boottest.boot_config(_boot_settings(ctx)),
    records=lambda ctx: ((ctx.files.boot_result, BootRecord),),
)


def _manifest_action(ctx: CellContext) -> None:
    manifest.write(ctx.cell, ctx.files, ctx.plan.version)


MANIFEST = Stage[CellContext](
    name="manifest",
    doc="write each image's manifest.json",
    group_doc="write the manifests",
    scope=Scope.CELL,
    ci_job=CiJob.IMAGE,
    action=_manifest_action,
    describe=lambda ctx: f"describe {ctx.cell.name} in manifest.json",
    inputs=lambda ctx: (
        ctx.files.raw,
        *ctx.files.artifacts,
        ctx.files.packages,
        ctx.files.facts,
        ctx.files.build_info,
        ctx.files.boot_result,
        *ctx.files.sboms,
    ),
    outputs=lambda ctx: (ctx.files.manifest,),
    records=lambda ctx: ((ctx.files.manifest, Manifest),),
    config=lambda ctx: {
        "schema": manifest.SCHEMA_VERSION,
        "version": ctx.plan.version,
        # A reproducibility report is optional: made on demand by `doit reproduce`.
        "reproducibility": _mtime(ctx.files.reproducibility),
    },
)


def _mtime(path: Path) -> float | None:
    return path.stat().st_mtime if path.exists() else None


def _provenance_action(ctx: CellContext) -> None:
    provenance.write(ctx.cell, ctx.files)


PROVENANCE = Stage[CellContext](
    name="provenance",
    doc="state each image's provenance (in-toto statement, SLSA v1 predicate)",
    group_doc="write the provenance statements",
    scope=Scope.CELL,
    ci_job=CiJob.IMAGE,
    action=_provenance_action,
    describe=lambda ctx: f"state where {ctx.cell.name} came from (in-toto, SLSA provenance)",
    inputs=lambda ctx: (ctx.files.manifest, ctx.files.build_info),
    outputs=lambda ctx: (ctx.files.provenance,),
    records=lambda ctx: ((ctx.files.provenance, None),),
    # Everything it states comes from its inputs (what the build recorded).
    config=lambda ctx: {"predicate": provenance.PREDICATE_TYPE},
)


def _publication_inputs(ctx: CellContext) -> tuple[Path, ...]:
    """What a publication reads: the image files, their descriptions, and what
    the changes between versions are made from (publish.cell_uploads)."""
    files = ctx.files
    return (*files.artifacts, files.manifest, *files.sboms, files.provenance, files.dpkg_status, files.changelogs)


def _publish_action(ctx: CellContext) -> None:
    publish.publish(ctx.cell, ctx.files, ctx.plan.storage, ctx.plan.matrix.publish)


PUBLISH = Stage[CellContext](
    name="publish",
    doc="publish artifacts and manifests to storage",
    group_doc="publish the images",
    scope=Scope.CELL,
    ci_job=CiJob.UPLOAD,
    action=_publish_action,
    describe=lambda ctx: f"publish {ctx.cell.name} to {ctx.plan.storage.url}",
    inputs=lambda ctx: _publication_inputs(ctx),
    outputs=lambda ctx: (ctx.files.published,),
    records=lambda ctx: ((ctx.files.published, PublishReceipt),),
    config=lambda ctx: {
        "storage": ctx.plan.storage.url,
        "keep_dailies": ctx.plan.matrix.publish.keep_dailies,
        # A key configured (or another one) signs what was published unsigned.
        "signed_by": os.environ.get(signing.FINGERPRINT_ENV),
    },
    checks=lambda ctx: [(publish.still_published, [str(ctx.files.published), ctx.plan.storage.url])],
)


def _platform_config(ctx: CellContext) -> dict | None:
    platform = ctx.plan.matrix.release.platforms.get(ctx.cell.vendor.name)
    return dataclasses.asdict(platform) if platform else None


def _release_action(ctx: CellContext) -> None:
    from tasks.release import step as release_step  # the release's clients: not needed to load the graph

    plan = ctx.plan
    release_step.release(
        ctx.cell,
        ctx.files,
        plan.confirmed,
        plan.storage,
        plan.matrix.publish,
        plan.matrix.release,
        plan.matrix.boot_test,
        plan.kvm_verdicts,
    )


RELEASE = Stage[CellContext](
    name="release",
    doc="release a cell: instance test, platform upload, publish, notify (confirm=yes)",
    group_doc="release cells by name only (confirm=yes)",
    scope=Scope.CELL,
    ci_job=CiJob.RELEASE,
    action=_release_action,
    describe=lambda ctx: f"release {ctx.cell.name}: instance test, platform upload, publish, notify (confirm=yes)",
    inputs=lambda ctx: _publication_inputs(ctx),
    outputs=lambda ctx: (ctx.files.release_record,),
    records=lambda ctx: ((ctx.files.release_record, ReleaseRecord),),
    config=lambda ctx: {
        "storage": ctx.plan.storage.url,
        "version": ctx.plan.version,
        "platforms": _platform_config(ctx),
    },
    manual=True,
)

# In the order a cell goes through them.
STAGES: tuple[Stage, ...] = (BASE, BUILD, SBOM, COMPRESS, BOOTTEST, MANIFEST, PROVENANCE, PUBLISH, RELEASE)


def stages() -> tuple[Stage, ...]:
    """The registry as it is now (tests may add a stage to it)."""
    return STAGES


def cell_chain() -> tuple[Stage, ...]:
    """The stages every cell goes through, in order: what `doit` runs for a tier."""
    return tuple(s for s in stages() if s.scope is Scope.CELL and not s.manual)


def by_name(name: str) -> Stage:
    for stage in stages():
        if stage.name == name:
            return stage
    raise KeyError(name)
