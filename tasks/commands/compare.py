"""`doit compare left=... right=...`: two images' facts, field by field (tasks/stages/imagefacts.py)."""

from __future__ import annotations

from pathlib import Path

from doit.exceptions import TaskFailed

from tasks.actions import on_demand
from tasks.model.layout import CellFiles
from tasks.model.plan import Plan
from tasks.stages import imagefacts

NAME = "compare"
HELP = "compare two images' facts, field by field (left=<cell or file> right=<cell or file>)"
WORKDIR_FREE = True


def facts_report(plan: Plan, given: str) -> Path:
    """left=/right=: a cell's facts.json, or a file (facts.json, or a manifest holding them)."""
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


def tasks(plan: Plan) -> dict:
    return on_demand((compare_reports, [plan]))
