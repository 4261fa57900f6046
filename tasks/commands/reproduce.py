"""`doit reproduce:<cell>`: build a cell again and compare the two (tasks/reproduce.py); by name only."""

from __future__ import annotations

from collections.abc import Iterator

from tasks import reproduce
from tasks.actions import paths, run_stage
from tasks.model.layout import CellFiles
from tasks.model.plan import Plan

NAME = "reproduce"
HELP = "build a cell again from the same base and packages and compare trees and disks (doit reproduce:<cell>)"
WORKDIR_FREE = False


def tasks(plan: Plan) -> Iterator[dict]:
    """reproduce:<cell> for every cell; in no group and not in the default run."""
    for cell in plan.matrix.cells:
        files = CellFiles.of(plan.workdir, cell)
        yield {
            "name": cell.name,
            "doc": f"build {cell.name} again from the same base and packages; compare trees and disks",
            "actions": [(run_stage, [f"{NAME}:{cell.name}", reproduce.reproduce, plan, cell])],
            "file_dep": paths([files.raw, files.build_info]),
            "targets": paths([files.reproducibility]),
            "uptodate": [False],  # asked for on purpose: always runs
            "clean": True,
        }
    yield {"name": None, "doc": HELP, "task_dep": []}  # a group that yields its sub-tasks takes no docstring
