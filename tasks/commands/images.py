"""`doit images [cells=patterns]`: what a storage holds, as its catalogue lists it (tasks/stages/catalogue.py)."""

from __future__ import annotations

import fnmatch

from tasks.actions import on_demand, run_stage
from tasks.errors import StageFailed
from tasks.model.plan import Plan
from tasks.stages import catalogue

NAME = "images"
HELP = "list the images a storage holds, from its catalogue (cells=<patterns> to choose)"
WORKDIR_FREE = True


def show(plan: Plan) -> None:
    backend = plan.open_storage()
    streams = catalogue.read(backend)
    if streams is None:
        raise StageFailed(f"{plan.storage.url} has no catalogue ({catalogue.INDEX}): `doit catalogue` writes one")
    patterns = (plan.cells or "*").replace(",", " ").split()
    chosen = [i for i in catalogue.images(streams) if any(fnmatch.fnmatchcase(i.cell, p) for p in patterns)]
    chosen.sort(key=lambda i: (i.release, i.vendor, i.arch, i.stream, i.version))
    rows = [("release", "vendor", "arch", "stream", "version", "formats", "incus/lxd", "signed")]
    rows += [
        (
            i.release,
            i.vendor,
            i.arch,
            i.stream,
            i.version,
            " ".join(i.formats),
            "vm" if i.vm else "-",
            "yes" if i.signed else "no",
        )
        for i in chosen
    ]
    widths = [max(len(row[n]) for row in rows) for n in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    print(f"{len(chosen)} image versions in {plan.storage.url}")


def tasks(plan: Plan) -> dict:
    return on_demand((run_stage, [NAME, show, plan]))
