"""`doit release_ci`: the release project's pipeline, a file of this repository (tasks/ci.py)."""

from __future__ import annotations

from tasks import ci
from tasks.actions import run_stage
from tasks.model.plan import Plan

NAME = "release_ci"
HELP = f"write the release project's pipeline ({ci.RELEASE_PROJECT_PIPELINE}) from matrix.yaml"
WORKDIR_FREE = False


def tasks(plan: Plan) -> dict:
    target = plan.root / ci.RELEASE_PROJECT_PIPELINE
    return {
        "actions": [(run_stage, [NAME, ci.write_release_project, plan, target])],
        "targets": [str(target)],
        # Made from matrix.yaml and the code that writes it: always written (it takes no time), never stale.
        "uptodate": [False],
    }
