"""Test and benchmark helper: a work directory as a finished run leaves it, without building.

Every stage's targets are there, and doit's database records each task's
success as doit's runner records it (its checks computed, their values
kept). The bases are real where their up-to-date check reads them: each
tarball holds the package lists of its release's suites, fetched from the
mirror, and its record (<base>.shares.json) what the host's apt resolves
from them, with apt's answers kept as the base's own run keeps them.
tasks/stale.py then says what a run would execute after an edit.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from doit.dependency import Dependency, SqliteDB

from tasks import graph, registry
from tasks.model.plan import Plan
from tasks.model.records import BaseShares, PublishReceipt
from tasks.stages import base, baseshare
from tasks.system import aptroot, checksum
from tasks.system.checksum import XXH3Checker

# The stages a run of a tier executes, and the known failures' runs of them (graph.xfail_name).
MADE = {stage.name for stage in registry.stages() if not stage.manual}
MADE |= {graph.xfail_name(stage) for stage in registry.cell_chain()}


def shares_check(task) -> baseshare.SharesCurrent:
    """A base task's check of what its images share: exactly one."""
    [check] = [check for check, _, _ in task.uptodate if isinstance(check, baseshare.SharesCurrent)]
    return check


def finish(the_plan: Plan, scratch: Path) -> None:
    """Make the_plan's work directory (every cell of the matrix) as a finished run leaves it."""
    tasks = graph.load_tasks(the_plan)
    made = [task for task in tasks.values() if task.name.partition(":")[0] in MADE and task.actions]
    for task in made:
        if task.name.startswith(f"{registry.BASE.name}:"):
            _base(the_plan, task, scratch / task.name.partition(":")[2])
        for target in map(Path, task.targets):
            if target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.name == "published.json":  # read by publish's check
                target.write_text(json.dumps(PublishReceipt(the_plan.storage.url, "nowhere").to_json()))
            else:
                target.write_text(f"{task.name}\n")
    tasks = graph.load_tasks(the_plan)  # as a run after this one loads them
    dependency = Dependency(SqliteDB, str(the_plan.workdir / ".doit.db"), checker_cls=XXH3Checker)
    for task in made:
        task = tasks[task.name]
        dependency.get_status(task, tasks)  # what its checks compute, kept below as doit's runner would
        task.save_extra_values()
        dependency.save_success(task)
    dependency.close()


def _base(the_plan: Plan, task, scratch: Path) -> None:
    check = shares_check(task)
    files = base.BaseFiles.of(the_plan.workdir, task.name.partition(":")[2])
    tree = scratch / "tree"
    # The lists a base holds, whatever Valid-Until their Release files say.
    apt = aptroot.AptRoot(scratch / "apt", check.arch, lists=tree / baseshare.LISTS)
    apt.prepare(check.sources)
    apt.run("-o", "Acquire::Check-Valid-Until=false", "update")
    files.dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["tar", "--create", "--zstd", "-C", str(tree), "-f", str(files.tarball), f"./{baseshare.LISTS}"], check=True
    )
    answers = baseshare.Memo(apt.installs)
    shared = baseshare.resolve(answers, check.include, check.selections)
    answers.save(files.installs_memo, checksum.sha256_kept(files.tarball))  # as the base's own run keeps them
    record = BaseShares(list(check.include), [list(s) for s in check.selections], list(shared), 0)
    files.shares.write_text(json.dumps(record.to_json()))
