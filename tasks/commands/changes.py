"""`doit changes left=... right=...`: the package changes between two images (tasks/published.py)."""

from __future__ import annotations

from tasks import published
from tasks.actions import on_demand, run_stage
from tasks.errors import StageFailed
from tasks.model.plan import Plan

NAME = "changes"
HELP = "list the package changes between two images (left=<cell>[@<version>] right=<cell>[@<version>])"
WORKDIR_FREE = True


def show(plan: Plan) -> None:
    left, right = plan.compare
    if not left or not right:
        raise StageFailed("doit changes needs two images: left=<cell>[@<version>] right=<cell>[@<version>]")
    print(published.compare(plan, left, right), end="")


def tasks(plan: Plan) -> dict:
    return on_demand((run_stage, [NAME, show, plan]))
