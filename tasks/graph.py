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

from tasks import commands, registry
from tasks.actions import paths, run_stage
from tasks.errors import StageFailed
from tasks.model.layout import CellFiles
from tasks.model.matrix import XFAIL_PREFIX, KnownFailure
from tasks.model.plan import Plan
from tasks.model.records import RecordsReadable, note_unreadable
from tasks.system import atomic


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
        "file_dep": paths(stage.inputs(ctx)),
        "targets": paths(stage.outputs(ctx)),
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
    return f"{XFAIL_PREFIX}{stage.name}"


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
        outcome.update(outcome=KnownFailure.FAILED_AS_EXPECTED, message=str(failure))
        print(f"EXPECTED FAILURE {cell_name} at {outcome['failed_stage']} ({known.reason}):\n{failure}")
    else:
        del outcome["failed_stage"]
        outcome["outcome"] = KnownFailure.UNEXPECTED_SUCCESS
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
                "file_dep": paths(steps[0][0].inputs(steps[0][1])),
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

    creators["task_xfail"] = task_xfail
    creators.update(commands.creators(plan))
    return creators


def load_tasks(plan: Plan) -> dict[str, Task]:
    """The graph's doit tasks by name, as `doit list --all` would show them."""
    tasks: dict[str, Task] = {}
    for name, creator in doit_tasks(plan).items():
        for task in generate_tasks(name.removeprefix("task_"), creator(), creator.__doc__):
            tasks[task.name] = task
    return tasks
