"""What a run would make again, without running anything: doit's own up-to-date
checks on the graph, carried downstream.

A task runs when doit finds it stale (a changed input, configuration or
check, a missing target), or when a task it depends on runs: that one writes
new outputs, and a dry run cannot know they will be the same bytes. The
tests (tests/test_staleness.py) and the benchmark ask it which tasks an edit
costs; doit's database is read, never written.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from doit.dependency import Dependency, SqliteDB
from doit.task import Task

from tasks.system.checksum import XXH3Checker


def would_run(
    tasks: Mapping[str, Task], dep_file: Path, roots: Iterable[str], assume_stale: Iterable[str] = ()
) -> set[str]:
    """The tasks with actions that running roots would execute (the tasks' names); those of
    assume_stale are taken as stale whatever doit says (what another design would have run)."""
    assumed = set(assume_stale)
    dependency = Dependency(SqliteDB, str(dep_file), checker_cls=XXH3Checker)
    producers = {target: task.name for task in tasks.values() for target in task.targets}
    runs: dict[str, bool] = {}

    def upstream(task: Task) -> list[str]:
        return [*task.task_dep, *(producers[f] for f in task.file_dep if f in producers)]

    def visit(name: str) -> bool:
        if name not in runs:
            runs[name] = False  # the graph is acyclic: doit refuses cycles
            task = tasks[name]
            pulled = [visit(dep) for dep in upstream(task)]  # every one visited: each may run
            own = bool(task.actions) and (name in assumed or dependency.get_status(task, tasks).status != "up-to-date")
            runs[name] = own or any(pulled)
        return runs[name]

    for root in roots:
        visit(root)
    return {name for name, run in runs.items() if run and tasks[name].actions}
