"""The doit task graph, made from the stage registry (tasks/registry.py): for
each stage, one sub-task per shared base or per cell, then its group task.

Every sub-task declares its files (file_dep, targets) and, as an up-to-date
check, the part of the configuration that shapes its output, so only stale
artifacts are made again. The group task of each stage (``doit build``)
covers the cells of the chosen tier. A cell listed in known_failures takes
part in the groups through ``xfail-<stage>:<cell>``, which runs its stages up
to that one in a directory of its own, reports a failure as expected (and a
success as unexpected), and does not fail the run; ``<stage>:<cell>`` itself
still fails when named. Manual stages (the release) are in no group.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

from doit.exceptions import TaskFailed
from doit.loader import generate_tasks
from doit.task import Task
from doit.tools import config_changed, timeout

from tasks import ci, published, registry, reproduce
from tasks.errors import StageFailed
from tasks.model.layout import CellFiles
from tasks.model.matrix import KnownFailure
from tasks.model.plan import Plan
from tasks.model.records import RecordsReadable, note_unreadable
from tasks.stages import imagefacts
from tasks.system import atomic, proc


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
    exception is a bug, and doit shows its traceback. A stage stopped by a
    signal ends with a KeyboardInterrupt whatever its cleanup raised instead:
    a doit worker that took it for a failure would wait for its next task,
    for ever when the main process was killed outright.
    """
    try:
        stage(*args)
    except Exception as error:
        if proc.stop_requested():
            raise KeyboardInterrupt(f"{title} stopped") from error
        if isinstance(error, StageFailed):
            return StageFailure(title, error)
        raise
    return None


def _paths(paths) -> list[str]:
    return [str(p) for p in paths]


def _uptodate(stage: registry.Stage, ctx, records) -> list:
    checks = [config_changed(stage.config(ctx)), *stage.checks(ctx), *([RecordsReadable(records)] if records else [])]
    days = stage.max_age_days(ctx)
    return checks + ([timeout(timedelta(days=days))] if days is not None else [])


def _sub_task(stage: registry.Stage, ctx) -> dict:
    title = f"{stage.name}:{ctx.name}"
    if stage.manual and not ctx.plan.confirmed:
        # Refused before anything is built for it.
        return {"name": ctx.name, "doc": stage.describe(ctx), "actions": [(refuse, [title])], "uptodate": [False]}
    records = stage.records(ctx)
    return {
        "name": ctx.name,
        "doc": stage.describe(ctx),
        "actions": [*([(note_unreadable, [records])] if records else []), (run_stage, [title, stage.action, ctx])],
        "file_dep": _paths(stage.inputs(ctx)),
        "targets": _paths(stage.outputs(ctx)),
        "uptodate": _uptodate(stage, ctx, records),
        "clean": True,
    }


def stage_tasks(plan: Plan, stage: registry.Stage) -> Iterator[dict]:
    """The sub-task of every cell (or base) for one stage, then the stage's group task."""
    for ctx in stage.contexts(plan):
        yield _sub_task(stage, ctx)
    if stage.manual:
        yield {"name": None, "doc": stage.group_doc, "task_dep": []}
        return
    # Yielded after the sub-tasks, this replaces doit's default group (every
    # cell) with the cells of the chosen tier, the known-failing ones through
    # their xfail task.
    names = stage.tier_names(plan)
    xfail = stage.scope is registry.Scope.CELL and stage in registry.cell_chain()
    units = f"{len(names)} {stage.scope.value}{'' if len(names) == 1 else 's'}"
    yield {
        "name": None,
        "doc": f"{stage.group_doc} (tier {plan.tier}: {units})",
        "task_dep": [
            f"{xfail_name(stage) if xfail and plan.matrix.known_failure(plan.matrix.cell(n)) else stage.name}:{n}"
            for n in names
        ],
    }


def refuse(title: str) -> TaskFailed:
    return TaskFailed(f"a release is made on purpose only: doit {title} confirm=yes")


# --------------------------------------------------------------------------
# Known failures


def xfail_name(stage: registry.Stage) -> str:
    return f"xfail-{stage.name}"


def _remove(*paths: Path) -> None:
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def run_allowed_failure(
    cell_name: str,
    stage: str,
    chain: list[tuple[str, Callable, list]],
    known: KnownFailure,
    record: str,
    directory: str | None = None,
) -> None:
    """A doit action: run a known-failing cell's stages up to stage, never failing.

    The outcome is printed and written to record: "failed as expected" with
    the failing stage and its message, or "unexpected success".
    """
    outcome = {"cell": cell_name, "stage": stage, "reason": known.reason}
    if directory:
        outcome["directory"] = directory  # where its stages wrote their files
    try:
        for name, action, args in chain:
            outcome["failed_stage"] = name
            action(*args)
    except StageFailed as failure:
        outcome.update(outcome="failed as expected", message=str(failure))
        print(f"EXPECTED FAILURE {cell_name} at {outcome['failed_stage']} ({known.reason}):\n{failure}")
    else:
        del outcome["failed_stage"]
        outcome["outcome"] = "unexpected success"
        print(
            f"UNEXPECTED SUCCESS {cell_name} passed {stage}: it is listed in known_failures "
            f"({known.reason!r} for {known.cells!r}); remove the entry if the cause is gone"
        )
    atomic.write_json(Path(record), outcome)


def xfail_tasks(plan: Plan) -> Iterator[dict]:
    """xfail-<stage>:<cell> for every stage of the chain and every known-failing cell."""
    chain = registry.cell_chain()
    for index, stage in enumerate(chain):
        for cell in plan.matrix.cells:
            known = plan.matrix.known_failure(cell)
            if not known:
                continue
            files = CellFiles.of(plan.workdir, cell).xfail_files(stage.name)
            steps = [(s, registry.cell_context(plan, cell, files)) for s in chain[: index + 1]]
            record = CellFiles.of(plan.workdir, cell).xfail_record(stage.name)
            yield {
                "basename": xfail_name(stage),
                "name": cell.name,
                "doc": f"{stage.name} {cell.name}, which is expected to fail: {known.reason}",
                "actions": [
                    (
                        run_allowed_failure,
                        [
                            cell.name,
                            stage.name,
                            [(s.name, s.action, [ctx]) for s, ctx in steps],
                            known,
                            str(record),
                            str(files.dir),
                        ],
                    )
                ],
                # What the chain's first stage reads from outside it (the base).
                "file_dep": _paths(steps[0][0].inputs(steps[0][1])),
                # The record is what it makes; the stages' files are written to
                # a directory only this task uses, and removed with it by doit clean.
                "targets": [str(record)],
                "uptodate": [config_changed({"stages": [s.config(ctx) for s, ctx in steps], "reason": known.reason})],
                "clean": [(_remove, [record, files.dir])],
            }


def doit_tasks(plan: Plan) -> dict[str, Callable]:
    """Every task creator of the graph, by the name dodo.py gives it (task_<name>)."""
    creators: dict[str, Callable] = {}
    for stage in registry.stages():

        def create(stage=stage):
            yield from stage_tasks(plan, stage)

        create.__doc__ = stage.doc
        creators[f"task_{stage.name}"] = create

    def task_xfail():
        """run known-failing cells (xfail-<stage>:<cell>) without failing the run"""
        yield from xfail_tasks(plan)

    def task_ci():
        """write the GitLab CI child pipeline (source=..., cells=...)"""
        return ci_task(plan)

    def task_release_ci():
        """write the release project's pipeline (.ci/release-project.yml)"""
        return release_ci_task(plan)

    def task_builder():
        """make the builder image: an OCI archive named by the digest of its inputs"""
        return builder_task(plan)

    def task_compare():
        """compare two images' facts (left=<cell or file> right=<cell or file>)"""
        return compare_task(plan)

    def task_changes():
        """list the package changes between two images (left=<cell>[@<version>] right=<cell>[@<version>])"""
        return changes_task(plan)

    def task_verify():
        """verify a published image: signature, checksums, provenance (image=<cell>[@<version>] key=<file>)"""
        return verify_task(plan)

    def task_cleanup():
        """list what platforms and storage hold beyond retention; delete it with confirm=yes"""
        return cleanup_task(plan)

    def task_reproduce():
        """build a cell again and compare the two (on demand: doit reproduce:<cell>)"""
        yield from reproduce_tasks(plan)

    creators.update(
        task_xfail=task_xfail,
        task_ci=task_ci,
        task_release_ci=task_release_ci,
        task_builder=task_builder,
        task_compare=task_compare,
        task_changes=task_changes,
        task_verify=task_verify,
        task_reproduce=task_reproduce,
        task_cleanup=task_cleanup,
    )
    return creators


def load_tasks(plan: Plan) -> dict[str, Task]:
    """The graph's doit tasks by name, as `doit list --all` would show them."""
    tasks: dict[str, Task] = {}
    for name, creator in doit_tasks(plan).items():
        for task in generate_tasks(name.removeprefix("task_"), creator(), creator.__doc__):
            tasks[task.name] = task
    return tasks


def ci_task(plan: Plan) -> dict:
    """`doit ci`: the GitLab CI child pipeline for source= and cells= (tasks/ci.py)."""
    target = plan.workdir / "ci" / "pipeline.yml"
    return {
        "actions": [(run_stage, ["ci", ci.write, plan, target])],
        "targets": [str(target)],
        "doc": "write the GitLab CI child pipeline (source=push|schedule|web|api..., cells=patterns)",
        "clean": True,
    }


def release_ci_task(plan: Plan) -> dict:
    """`doit release_ci`: the release project's pipeline, a file of this repository (tasks/ci.py)."""
    target = plan.root / ci.RELEASE_PROJECT_PIPELINE
    return {
        "actions": [(run_stage, ["release_ci", ci.write_release_project, plan, target])],
        "targets": [str(target)],
        "file_dep": [str(plan.matrix.path)],
        "doc": "write the release project's pipeline (.ci/release-project.yml) from matrix.yaml",
    }


def _failed(message: str) -> TaskFailed:
    return TaskFailed(message)


def builder_task(plan: Plan) -> dict:
    """`doit builder`: the image every CI job runs in (tasks/builder), made again when its inputs change."""
    from tasks.builder import image, inputs

    try:
        target = inputs.archive(plan.workdir, plan.root)
    except OSError as error:  # a copy of the project without them: only this task cannot run
        return {"actions": [(_failed, [f"the builder's inputs cannot be read: {error}"])], "uptodate": [False]}
    return {
        "actions": [(run_stage, ["builder", image.build, plan, target])],
        "targets": [str(target)],
        "file_dep": [str(plan.root / name) for name in inputs.FILES],
        "doc": "make the builder image (build/builder/images-builder-<inputs>.oci.tar; podman load -i it)",
        "clean": True,
    }


# --------------------------------------------------------------------------
# Comparing images


def facts_report(plan: Plan, given: str) -> Path:
    """left=/right= of `doit compare`: a cell's facts.json, or a file (facts.json,
    or a manifest holding them)."""
    if given in {cell.name for cell in plan.matrix.cells}:
        return CellFiles.of(plan.workdir, plan.matrix.cell(given)).facts
    return (plan.root / given).resolve()


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


# The on-demand tasks that read what is published or built and write nothing of the work directory:
# run alone, they take no lock and leave no state (dodo.py).
WORKDIR_FREE = frozenset({"compare", "changes", "verify", "cleanup"})


def on_demand_task(action: tuple, doc: str) -> dict:
    """A task run by name for what it shows (compare, changes, verify): it always runs."""
    return {"actions": [action], "uptodate": [False], "verbosity": 2, "doc": doc}


def compare_task(plan: Plan) -> dict:
    return on_demand_task(
        (compare_reports, [plan]),
        "compare two images' facts, field by field (left=<cell or file> right=<cell or file>)",
    )


# --------------------------------------------------------------------------
# Published images: changes between two, verifying one; reproducing a build


def _changes(plan: Plan) -> None:
    left, right = plan.compare
    if not left or not right:
        raise StageFailed("doit changes needs two images: left=<cell>[@<version>] right=<cell>[@<version>]")
    print(published.compare(plan, left, right), end="")


def changes_task(plan: Plan) -> dict:
    return on_demand_task(
        (run_stage, ["changes", _changes, plan]),
        "list the package changes between two images (left=<cell>[@<version>] right=<cell>[@<version>])",
    )


def _verify(plan: Plan) -> None:
    image, key = plan.verify
    if not image or not key:
        raise StageFailed("doit verify needs an image and a public key: image=<cell>[@<version>] key=<file>")
    for line in published.verify(plan, image, (plan.root / key).resolve()):
        print(f"ok: {line}")


def verify_task(plan: Plan) -> dict:
    return on_demand_task(
        (run_stage, ["verify", _verify, plan]),
        "verify a published image: signature, checksums, provenance (image=<cell>[@<version>] key=<file>)",
    )


def _cleanup(plan: Plan) -> None:
    from tasks.release import cleanup  # the clouds' clients: only when asked

    cleanup.cleanup(plan)


def cleanup_task(plan: Plan) -> dict:
    return on_demand_task(
        (run_stage, ["cleanup", _cleanup, plan]),
        "list what the platforms and storage hold beyond the retention settings; delete it with confirm=yes",
    )


def reproduce_tasks(plan: Plan) -> Iterator[dict]:
    """reproduce:<cell> for every cell; in no group and not in the default run."""
    for cell in plan.matrix.cells:
        files = CellFiles.of(plan.workdir, cell)
        yield {
            "name": cell.name,
            "doc": f"build {cell.name} again from the same base and packages; compare trees and disks",
            "actions": [(run_stage, [f"reproduce:{cell.name}", reproduce.reproduce, plan, cell])],
            "file_dep": _paths([files.raw, files.build_info]),
            "targets": _paths([files.reproducibility]),
            "uptodate": [False],  # asked for on purpose: always runs
            "clean": True,
        }
    yield {"name": None, "doc": "reproduce:<cell> builds a cell again and compares (by name only)", "task_dep": []}
