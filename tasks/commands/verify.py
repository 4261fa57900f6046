"""`doit verify image=... key=...`: a published image's signature, checksums and provenance (tasks/published.py)."""

from __future__ import annotations

from tasks import published
from tasks.actions import on_demand, run_stage
from tasks.errors import StageFailed
from tasks.model.plan import Plan

NAME = "verify"
HELP = "verify a published image: signature, checksums, provenance (image=<cell>[@<version>] key=<file>)"
WORKDIR_FREE = True


def check(plan: Plan) -> None:
    image, key = plan.verify
    if not image or not key:
        raise StageFailed("doit verify needs an image and a public key: image=<cell>[@<version>] key=<file>")
    for line in published.verify(plan, image, (plan.root / key).resolve()):
        print(f"ok: {line}")


def tasks(plan: Plan) -> dict:
    return on_demand((run_stage, [NAME, check, plan]))
