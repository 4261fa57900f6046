"""`doit builder`: the image every CI job runs in (tasks/builder), made again when its inputs change."""

from __future__ import annotations

from doit.exceptions import TaskFailed

from tasks.actions import run_stage
from tasks.model.plan import Plan

NAME = "builder"
HELP = "make the builder image (build/builder/images-builder-<inputs>.oci.tar; podman load -i it)"
WORKDIR_FREE = False


def _failed(message: str) -> TaskFailed:
    return TaskFailed(message)


def tasks(plan: Plan) -> dict:
    from tasks.builder import image, inputs

    try:
        target = inputs.archive(plan.workdir, plan.root)
    except OSError as error:  # a copy of the project without them: only this task cannot run
        return {"actions": [(_failed, [f"the builder's inputs cannot be read: {error}"])], "uptodate": [False]}
    return {
        "actions": [(run_stage, [NAME, image.build, plan, target])],
        "targets": [str(target)],
        "file_dep": [str(plan.root / name) for name in inputs.FILES],
        "clean": True,
    }
