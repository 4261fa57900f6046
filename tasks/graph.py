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
from .plan import Plan

STAGES = ("build", "compress", "boottest", "manifest", "publish")


def run_stage(stage: Callable, *args) -> TaskFailed | None:
    """A doit action: run one stage; a StageFailed fails the task with its message."""
    try:
        stage(*args)
    except StageFailed as failure:
        return TaskFailed(str(failure))
    return None


def _group(plan: Plan, stage: str, doc: str) -> dict:
    # Yielded after the sub-tasks, it replaces doit's default group (every
    # cell) with the cells of the chosen tier.
    return {
        "name": None,
        "doc": f"{doc} (tier {plan.tier}: {len(plan.tier_cells)} cells)",
        "task_dep": [f"{stage}:{cell.name}" for cell in plan.tier_cells],
    }


def build_tasks(plan: Plan) -> Iterator[dict]:
    settings = plan.matrix.build
    for cell in plan.matrix.cells:
        files = CellFiles.of(plan.workdir, cell)
        yield {
            "name": cell.name,
            "doc": f"build {cell.name} with fai-diskimage",
            "actions": [(run_stage, [fai.build, cell, files, settings, plan.config_space, plan.build_version])],
            "file_dep": [str(p) for p in faiconfig.selected_files(plan.config_space, cell.fai_classes)],
            "targets": [str(files.raw), str(files.build_log), str(files.packages), str(files.build_info)],
            "uptodate": [config_changed(fai.build_config(cell, settings))],
            "clean": True,
        }
    yield _group(plan, "build", "build the raw images")


def compress_tasks(plan: Plan) -> Iterator[dict]:
    settings = plan.matrix.compress
    for cell in plan.matrix.cells:
        files = CellFiles.of(plan.workdir, cell)
        yield {
            "name": cell.name,
            "doc": f"compress {cell.name}: {', '.join(cell.vendor.formats)}",
            "actions": [(run_stage, [compress.compress, cell, files, settings])],
            "file_dep": [str(files.raw)],
            "targets": [str(p) for p in files.artifacts],
            "uptodate": [config_changed(compress.compress_config(cell, settings))],
            "clean": True,
        }
    yield _group(plan, "compress", "compress the images")


def boottest_tasks(plan: Plan) -> Iterator[dict]:
    settings = plan.matrix.boot_test
    for cell in plan.matrix.cells:
        files = CellFiles.of(plan.workdir, cell)
        yield {
            "name": cell.name,
            "doc": f"boot {cell.name} in qemu until {settings.until}",
            "actions": [(run_stage, [boottest.boot_test, cell, files, settings])],
            "file_dep": [str(files.raw)],
            "targets": [str(files.boot_log), str(files.boot_result)],
            "uptodate": [config_changed(boottest.boot_config(settings))],
            "clean": True,
        }
    yield _group(plan, "boottest", "boot-test the images")


def manifest_tasks(plan: Plan) -> Iterator[dict]:
    for cell in plan.matrix.cells:
        files = CellFiles.of(plan.workdir, cell)
        yield {
            "name": cell.name,
            "doc": f"describe {cell.name} in manifest.json",
            "actions": [(run_stage, [manifest.write, cell, files, plan.version])],
            "file_dep": [str(p) for p in (*files.artifacts, files.packages, files.build_info, files.boot_result)],
            "targets": [str(files.manifest)],
            "uptodate": [config_changed({"schema": manifest.SCHEMA_VERSION, "version": plan.version})],
            "clean": True,
        }
    yield _group(plan, "manifest", "write the manifests")


def publish_tasks(plan: Plan) -> Iterator[dict]:
    for cell in plan.matrix.cells:
        files = CellFiles.of(plan.workdir, cell)
        yield {
            "name": cell.name,
            "doc": f"publish {cell.name} to {plan.storage.url}",
            "actions": [(run_stage, [storage.publish, cell, files, plan.storage])],
            "file_dep": [str(p) for p in (*files.artifacts, files.manifest)],
            "targets": [str(files.published)],
            "uptodate": [
                config_changed({"storage": plan.storage.url}),
                (storage.still_published, [str(files.published), str(plan.storage.root)]),
            ],
            "clean": True,
        }
    yield _group(plan, "publish", "publish the images")
