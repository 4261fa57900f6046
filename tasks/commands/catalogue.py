"""`doit catalogue`: the storage's simplestreams catalogue, written again from what it holds
(tasks/stages/catalogue.py)."""

from __future__ import annotations

from tasks.actions import on_demand, run_stage
from tasks.model.plan import Plan
from tasks.stages import catalogue
from tasks.system import signing

NAME = "catalogue"
HELP = "write the storage's simplestreams catalogue (streams/v1/) again from what it holds"
WORKDIR_FREE = True


def run(plan: Plan) -> None:
    backend = plan.open_storage()
    with signing.configured_signer() as signer, backend.locked("writing the catalogue"):
        listed = catalogue.write(backend, signer, anew=True)  # the storage alone: nothing from a catalogue
    print(f"{plan.storage.url}/{catalogue.INDEX}: {len(listed)} image versions")


def tasks(plan: Plan) -> dict:
    return on_demand((run_stage, [NAME, run, plan]))
