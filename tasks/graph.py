"""The doit task graph: one sub-task per cell and stage.

    build:<cell>     fai-diskimage            -> disk.raw, build.log, packages.tsv, build-info.json
    compress:<cell>  disk.raw                 -> image.tar.xz, image.qcow2
    boottest:<cell>  disk.raw                 -> boot.log, boottest.json
    manifest:<cell>  artifacts, packages, ... -> manifest.json
    publish:<cell>   artifacts, manifest      -> published.json (and the files in storage)

Every sub-task declares its files (file_dep, targets) and, as an up-to-date
check, the part of the configuration that shapes its output, so that only
stale artifacts are made again. The group task of each stage (``doit
build``) covers the cells of the chosen tier; any cell can be named.
"""

from __future__ import annotations

from typing import Callable, Iterator

from doit.exceptions import TaskFailed
from doit.tools import config_changed

from . import boottest, compress, fai, faiconfig, manifest, storage
from .errors import StageFailed
from .layout import CellFiles
from .matrix import Cell
from .plan import Plan


def run_stage(stage: Callable, *args) -> TaskFailed | None:
    """A doit action: run one stage; a StageFailed fails the task with its message."""
    try:
        stage(*args)
    except StageFailed as failure:
        return TaskFailed(str(failure))
    return None


def _paths(*paths) -> list[str]:
    return [str(p) for p in paths]


def _build(plan: Plan, cell: Cell, files: CellFiles) -> dict:
    settings = plan.matrix.build
    return {
        "doc": f"build {cell.name} with fai-diskimage",
        "actions": [(run_stage, [fai.build, cell, files, settings, plan.config_space, plan.build_version])],
        "file_dep": _paths(*faiconfig.selected_files(plan.config_space, cell.fai_classes)),
        "targets": _paths(files.raw, files.build_log, files.packages, files.build_info),
        "uptodate": [config_changed(fai.build_config(cell, settings))],
    }


def _compress(plan: Plan, cell: Cell, files: CellFiles) -> dict:
    settings = plan.matrix.compress
    return {
        "doc": f"compress {cell.name}: {', '.join(cell.vendor.formats)}",
        "actions": [(run_stage, [compress.compress, cell, files, settings])],
        "file_dep": _paths(files.raw),
        "targets": _paths(*files.artifacts),
        "uptodate": [config_changed(compress.compress_config(cell, settings))],
    }


def _boottest(plan: Plan, cell: Cell, files: CellFiles) -> dict:
    settings = plan.matrix.boot_test
    return {
        "doc": f"boot {cell.name} in qemu until {settings.until}",
        "actions": [(run_stage, [boottest.boot_test, cell, files, settings])],
        "file_dep": _paths(files.raw),
        "targets": _paths(files.boot_log, files.boot_result),
        "uptodate": [config_changed(boottest.boot_config(settings))],
    }


def _manifest(plan: Plan, cell: Cell, files: CellFiles) -> dict:
    return {
        "doc": f"describe {cell.name} in manifest.json",
        "actions": [(run_stage, [manifest.write, cell, files, plan.version])],
        "file_dep": _paths(*files.artifacts, files.packages, files.build_info, files.boot_result),
        "targets": _paths(files.manifest),
        "uptodate": [config_changed({"schema": manifest.SCHEMA_VERSION, "version": plan.version})],
    }


def _publish(plan: Plan, cell: Cell, files: CellFiles) -> dict:
    return {
        "doc": f"publish {cell.name} to {plan.storage.url}",
        "actions": [(run_stage, [storage.publish, cell, files, plan.storage])],
        "file_dep": _paths(*files.artifacts, files.manifest),
        "targets": _paths(files.published),
        "uptodate": [
            config_changed({"storage": plan.storage.url}),
            (storage.still_published, [str(files.published), str(plan.storage.root)]),
        ],
    }


# stage: (its sub-task for one cell, what its group task does)
STAGES: dict[str, tuple[Callable[[Plan, Cell, CellFiles], dict], str]] = {
    "build": (_build, "build the raw images"),
    "compress": (_compress, "compress the images"),
    "boottest": (_boottest, "boot-test the images"),
    "manifest": (_manifest, "write the manifests"),
    "publish": (_publish, "publish the images"),
}


def stage_tasks(plan: Plan, stage: str) -> Iterator[dict]:
    """The sub-task of every cell for one stage, then the stage's group task."""
    describe, group_doc = STAGES[stage]
    for cell in plan.matrix.cells:
        yield {"name": cell.name, "clean": True, **describe(plan, cell, CellFiles.of(plan.workdir, cell))}
    # Yielded after the sub-tasks, this replaces doit's default group (every
    # cell) with the cells of the chosen tier.
    tier = plan.tier_cells
    yield {
        "name": None,
        "doc": f"{group_doc} (tier {plan.tier}: {len(tier)} cells)",
        "task_dep": [f"{stage}:{cell.name}" for cell in tier],
    }
