"""`doit cleanup [confirm=yes]`: what platforms and storage hold beyond retention (tasks/release/cleanup.py)."""

from __future__ import annotations

from tasks.actions import on_demand, run_stage
from tasks.model.plan import Plan

NAME = "cleanup"
HELP = "list what the platforms and storage hold beyond the retention settings; delete it with confirm=yes"
WORKDIR_FREE = True


def run(plan: Plan) -> None:
    from tasks.release import cleanup  # the clouds' clients: only when asked

    cleanup.cleanup(plan)


def tasks(plan: Plan) -> dict:
    return on_demand((run_stage, [NAME, run, plan]))
