"""The commands run by name beside the graph's stages (`doit compare left=... right=...`),
one module each, in the way doit keeps its own commands in cmd_* modules.

Each module declares:

- ``NAME``: the task's name;
- ``HELP``: one line that `doit list` and `doit help` show (the creator's docstring);
- ``WORKDIR_FREE``: it reads what is published or built and writes nothing of the
  work directory; run alone, it takes no lock and leaves no state (dodo.py);
- ``tasks(plan)``: the task's dict, or its sub-tasks' dicts.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

from tasks.commands import builder, catalogue, changes, ci, cleanup, compare, images, release_ci, reproduce, verify
from tasks.model.plan import Plan

COMMANDS: tuple[ModuleType, ...] = (
    ci,
    release_ci,
    builder,
    compare,
    changes,
    verify,
    cleanup,
    reproduce,
    catalogue,
    images,
)
WORKDIR_FREE = frozenset(command.NAME for command in COMMANDS if command.WORKDIR_FREE)


def creators(plan: Plan) -> dict[str, Callable]:
    """task_<name> for each command, documented by its HELP alone."""
    made: dict[str, Callable] = {}
    for command in COMMANDS:

        def create(command=command):
            return command.tasks(plan)

        create.__doc__ = command.HELP
        made[f"task_{command.NAME}"] = create
    return made
