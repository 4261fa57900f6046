"""`doit ci source=... cells=...`: the GitLab CI child pipeline (tasks/ci.py)."""

from __future__ import annotations

from tasks import ci
from tasks.actions import run_stage
from tasks.model.plan import Plan

NAME = "ci"
HELP = "write the GitLab CI child pipeline (source=push|schedule|web|api..., cells=patterns)"
WORKDIR_FREE = False


def tasks(plan: Plan) -> dict:
    target = plan.workdir / "ci" / "pipeline.yml"
    return {"actions": [(run_stage, [NAME, ci.write, plan, target])], "targets": [str(target)], "clean": True}
