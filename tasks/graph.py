"""The doit task graph: a shared base per release and architecture, then one
sub-task per cell and stage.

    base:<release>-<arch>  debootstrap, upgrade      -> base/<release>-<arch>.tar.zst
    build:<cell>     the base, its classes' FAI files -> disk.raw, build.log, packages.tsv, build-info.json
    compress:<cell>  disk.raw                        -> image.tar.xz, image.qcow2, ...
    boottest:<cell>  disk.raw                        -> boot-<firmware>.log, boottest.json
    manifest:<cell>  artifacts, packages, ...        -> manifest.json
    publish:<cell>   artifacts, manifest             -> published.json (and the files in storage)

Every sub-task declares its files (file_dep, targets) and, as an up-to-date
check, the part of the configuration that shapes its output, so only stale
artifacts are made again. The group task of each stage (``doit build``)
covers the cells of the chosen tier. A cell listed in known_failures takes
part in the groups through ``xfail-<stage>:<cell>``, which runs its stages up
to that one, reports a failure as expected (and a success as unexpected),
and does not fail the run; ``<stage>:<cell>`` itself still fails when named.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Callable, Iterator

from doit.exceptions import TaskFailed
from doit.tools import config_changed, timeout

from tasks import ci
from tasks.errors import StageFailed
from tasks.model.layout import CellFiles
from tasks.model.matrix import Cell, KnownFailure
from tasks.model.plan import Plan
from tasks.release import step as release
from tasks.stages import base, boottest, compress, fai, faiconfig, imagefacts, manifest, publish
from tasks.system import atomic

STAGE_NAMES = ("build", "compress", "boottest", "manifest", "publish")


class StageFailure(TaskFailed):
    """A task's StageFailed, as doit reports it: the message, and the log to read."""

    def __init__(self, title: str, failure: StageFailed):
        cell = title.partition(":")[2]
        # Most messages name their cell first; the title already does.
        message = str(failure).removeprefix(f"{cell}: ")
        super().__init__(f"{title} failed: {message}")
        self.log = str(failure.log) if failure.log else None


def run_stage(title: str, stage: Callable, *args) -> TaskFailed | None:
    """A doit action: run one stage; a StageFailed fails the task with its message alone.

    title names the task ("build:bookworm-nocloud-amd64"). Any other
    exception is a bug, and doit shows its traceback.
    """
    try:
        stage(*args)
    except StageFailed as failure:
        return StageFailure(title, failure)
    return None


@dataclass
class Step:
    """One stage of one cell: what it runs, reads, writes and depends on."""

    call: tuple[Callable, list]  # the stage function and its arguments
    doc: str
    file_dep: list[str]
    targets: list[str]
    configs: list[dict]  # configuration that shapes the output
    checks: list = field(default_factory=list)  # further up-to-date callables

    def task(self, stage: str, name: str) -> dict:
        fn, args = self.call
        return {
            "name": name,
            "doc": self.doc,
            "actions": [(run_stage, [f"{stage}:{name}", fn, *args])],
            "file_dep": self.file_dep,
            "targets": self.targets,
            "uptodate": [config_changed(c) for c in self.configs] + self.checks,
            "clean": True,
        }


def _paths(*paths) -> list[str]:
    return [str(p) for p in paths]


def _build(plan: Plan, cell: Cell, files: CellFiles) -> Step:
    settings = plan.matrix.build
    base_files = base.BaseFiles.of(plan.workdir, cell.base_name)
    inputs = fai.BuildInputs(plan.config_space, base_files.tarball, base.package_cache(plan.workdir),
                             plan.build_version, plan.cpu_slots)
    return Step(
        call=(fai.build, [cell, files, settings, inputs]),
        doc=f"build {cell.name} with fai-diskimage",
        file_dep=_paths(base_files.tarball, *faiconfig.selected_files(plan.config_space, cell.fai_classes),
                       *fai.IN_BUILD_MODULES),
        targets=_paths(files.raw, files.build_log, files.packages, files.facts, files.build_info),
        configs=[fai.build_config(cell, settings)],
    )


def _compress(plan: Plan, cell: Cell, files: CellFiles) -> Step:
    settings = plan.matrix.compress
    return Step(
        call=(compress.compress, [cell, files, settings, plan.cpu_slots]),
        doc=f"compress {cell.name}: {', '.join(cell.vendor.formats)}",
        file_dep=_paths(files.raw),
        targets=_paths(*files.artifacts),
        configs=[compress.compress_config(cell, settings)],
    )


def _boottest(plan: Plan, cell: Cell, files: CellFiles) -> Step:
    settings = boottest.settings_for(cell, plan.matrix.boot_test)
    return Step(
        call=(boottest.boot_test, [cell, files, settings, plan.cpu_slots, plan.kvm_verdicts]),
        doc=f"boot {cell.name} in qemu ({', '.join(cell.arch.firmware)}) until {settings.until}",
        file_dep=_paths(files.raw),
        targets=_paths(*files.boot_logs, files.boot_result),
        configs=[boottest.boot_config(settings)],
    )


def _manifest(plan: Plan, cell: Cell, files: CellFiles) -> Step:
    return Step(
        call=(manifest.write, [cell, files, plan.version]),
        doc=f"describe {cell.name} in manifest.json",
        file_dep=_paths(*files.artifacts, files.packages, files.facts, files.build_info, files.boot_result),
        targets=_paths(files.manifest),
        configs=[{"schema": manifest.SCHEMA_VERSION, "version": plan.version}],
    )


def _publish(plan: Plan, cell: Cell, files: CellFiles) -> Step:
    return Step(
        call=(publish.publish, [cell, files, plan.storage, plan.matrix.publish, plan.locks]),
        doc=f"publish {cell.name} to {plan.storage.url}",
        file_dep=_paths(*files.artifacts, files.manifest),
        targets=_paths(files.published),
        configs=[{"storage": plan.storage.url, "keep_dailies": plan.matrix.publish.keep_dailies}],
        checks=[(publish.still_published, [str(files.published), plan.storage.url])],
    )


# stage: (its step for one cell, what its group task does)
STAGES: dict[str, tuple[Callable[[Plan, Cell, CellFiles], Step], str]] = {
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
        yield describe(plan, cell, CellFiles.of(plan.workdir, cell)).task(stage, cell.name)
    # Yielded after the sub-tasks, this replaces doit's default group (every
    # cell) with the cells of the chosen tier, the known-failing ones through
    # their xfail task.
    tier = plan.tier_cells
    yield {
        "name": None,
        "doc": f"{group_doc} (tier {plan.tier}: {len(tier)} cells)",
        "task_dep": [f"{'xfail-' if plan.matrix.known_failure(c) else ''}{stage}:{c.name}" for c in tier],
    }


def base_tasks(plan: Plan) -> Iterator[dict]:
    settings = plan.matrix.build
    needed = {cell.base_name: cell for cell in plan.matrix.cells}
    for name, cell in needed.items():
        files = base.BaseFiles.of(plan.workdir, name)
        content = base.BaseContent.of(plan.config_space, cell.release, cell.arch, settings)
        yield {
            "name": name,
            "doc": f"debootstrap {cell.release.name} for {cell.arch.name}: the base of its images",
            "actions": [(run_stage, [f"base:{name}", base.build, cell.release, cell.arch.name, files,
                                     settings, base.package_cache(plan.workdir), plan.cpu_slots, content])],
            "targets": _paths(files.tarball, files.log),
            "uptodate": [config_changed(base.base_config(cell.release, cell.arch.name, settings, content)),
                         timeout(timedelta(days=settings.base_max_age_days))],
            "clean": True,
        }
    tier_bases = sorted({cell.base_name for cell in plan.tier_cells})
    yield {"name": None, "doc": f"the shared bases of tier {plan.tier}",
           "task_dep": [f"base:{name}" for name in tier_bases]}


# --------------------------------------------------------------------------
# Known failures


def run_allowed_failure(cell_name: str, stage: str, chain: list[tuple[str, Callable, list]],
                        known: KnownFailure, record: str) -> None:
    """A doit action: run a known-failing cell's stages up to stage, never failing.

    The outcome is printed and written to record: "failed as expected" with
    the failing stage and its message, or "unexpected success".
    """
    outcome = {"cell": cell_name, "stage": stage, "reason": known.reason}
    try:
        for name, fn, args in chain:
            outcome["failed_stage"] = name
            fn(*args)
    except StageFailed as failure:
        outcome.update(outcome="failed as expected", message=str(failure))
        print(f"EXPECTED FAILURE {cell_name} at {outcome['failed_stage']} ({known.reason}):\n{failure}")
    else:
        del outcome["failed_stage"]
        outcome["outcome"] = "unexpected success"
        print(f"UNEXPECTED SUCCESS {cell_name} passed {stage}: it is listed in known_failures "
              f"({known.reason!r} for {known.cells!r}); remove the entry if the cause is gone")
    atomic.write_json(Path(record), outcome)


def xfail_tasks(plan: Plan) -> Iterator[dict]:
    """xfail-<stage>:<cell> for every stage of every known-failing cell."""
    for stage in STAGE_NAMES:
        yield from _xfail_stage(plan, stage)


def _xfail_stage(plan: Plan, stage: str) -> Iterator[dict]:
    for cell in plan.matrix.cells:
        known = plan.matrix.known_failure(cell)
        if not known:
            continue
        files = CellFiles.of(plan.workdir, cell)
        steps = []
        for name in STAGE_NAMES[:STAGE_NAMES.index(stage) + 1]:
            steps.append((name, STAGES[name][0](plan, cell, files)))
        first = steps[0][1]
        yield {
            "basename": f"xfail-{stage}",
            "name": cell.name,
            "doc": f"{stage} {cell.name}, which is expected to fail: {known.reason}",
            "actions": [(run_allowed_failure, [cell.name, stage, [(n, *s.call) for n, s in steps], known,
                                               str(files.dir / f"xfail-{stage}.json")])],
            "file_dep": first.file_dep,
            "targets": [str(files.dir / f"xfail-{stage}.json")],
            "uptodate": [config_changed({"stages": [c for _, s in steps for c in s.configs],
                                         "reason": known.reason})],
        }


def ci_task(plan: Plan) -> dict:
    """`doit ci`: the GitLab CI child pipeline for source= and cells= (tasks/ci.py)."""
    target = plan.workdir / "ci" / "pipeline.yml"
    return {
        "actions": [(run_stage, ["ci", ci.write, plan, target])],
        "targets": [str(target)],
        "doc": "write the GitLab CI child pipeline (source=push|schedule|web|api..., cells=patterns)",
        "clean": True,
    }


def refuse_release(cell_name: str) -> TaskFailed:
    return TaskFailed(f"a release is made on purpose only: doit release:{cell_name} confirm=yes")


def release_tasks(plan: Plan) -> Iterator[dict]:
    """release:<cell>, manual only: in no group and no default run (tasks/release/step.py)."""
    for cell in plan.matrix.cells:
        files = CellFiles.of(plan.workdir, cell)
        doc = f"release {cell.name}: instance test, platform upload, publish, notify (confirm=yes)"
        if not plan.confirmed:
            # Refused before anything is built for it.
            yield {"name": cell.name, "doc": doc, "actions": [(refuse_release, [cell.name])], "uptodate": [False]}
            continue
        yield {
            "name": cell.name,
            "doc": doc,
            "actions": [(run_stage, [f"release:{cell.name}", release.release, cell, files, plan.confirmed,
                                     plan.storage, plan.matrix.publish, plan.matrix.release, plan.matrix.boot_test,
                                     plan.locks, plan.kvm_verdicts])],
            "file_dep": _paths(*files.artifacts, files.manifest),
            "targets": _paths(files.release_record),
            "uptodate": [config_changed({"storage": plan.storage.url, "version": plan.version,
                                         "platforms": plan.matrix.release.platforms.get(cell.vendor.name)})],
        }
    yield {"name": None, "doc": "release cells by name only (confirm=yes)", "task_dep": []}


# --------------------------------------------------------------------------
# Comparing images


def facts_report(plan: Plan, given: str) -> Path:
    """left=/right= of `doit compare`: a cell's facts.json, or a file (facts.json,
    or a manifest holding them)."""
    if given in {cell.name for cell in plan.matrix.cells}:
        return CellFiles.of(plan.workdir, plan.matrix.cell(given)).facts
    return (plan.base / given).resolve()


def compare_reports(plan: Plan) -> TaskFailed | None:
    left, right = plan.compare
    if not left or not right:
        return TaskFailed("doit compare needs two reports: doit compare left=<cell or file> right=<cell or file>")
    try:
        reports = [imagefacts.load(facts_report(plan, given)) for given in (left, right)]
    except imagefacts.FactsError as error:
        return TaskFailed(str(error))
    differences = imagefacts.compare(*reports)
    print(f"{left} and {right}: " + (f"{len(differences)} differences" if differences else "no difference"))
    for line in differences:
        print(f"  {line}")
    return None


def compare_task(plan: Plan) -> dict:
    return {
        "actions": [(compare_reports, [plan])],
        "uptodate": [False],
        "verbosity": 2,
        "doc": "compare two images' facts, field by field (left=<cell or file> right=<cell or file>)",
    }
