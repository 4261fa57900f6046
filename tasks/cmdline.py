"""What a doit command line asks for, read as doit itself reads it (doit_cmd.DoitMain.run).

The loader's options (-f, -d, -k) may come first; name=value arguments are
doit variables, set aside; then the first argument is the sub-command when it
names one, else the command is `run`; what is left after the command's own
options is the task selection (names, targets, wildcards such as 'build:*').
"""

from __future__ import annotations

from dataclasses import dataclass

from doit.cmd_base import DodoTaskLoader, DoitCmdBase
from doit.cmdparse import CmdOption, CmdParse, CmdParseError
from doit.doit_cmd import DoitMain

# The sub-commands that only read: they take no lock and change nothing in the work directory.
READING_COMMANDS = frozenset({"list", "info", "help", "dumpdb", "tabcompletion"})
# The sub-commands whose arguments name tasks (or, for run, targets).
NAMING_COMMANDS = frozenset({"run", "info", "list", "clean", "forget", "ignore"})


@dataclass(frozen=True)
class Invocation:
    command: str
    tasks: tuple[str, ...]  # the tasks named (run: empty for the default tasks)

    def only(self, basenames: frozenset[str]) -> bool:
        """Whether this is a run of tasks of these names alone (`doit verify image=...`)."""
        return self.command == "run" and bool(self.tasks) and all(t.partition(":")[0] in basenames for t in self.tasks)

    @property
    def wildcards(self) -> tuple[str, ...]:
        return tuple(t for t in self.tasks if "*" in t)

    @property
    def names(self) -> tuple[str, ...]:
        """The tasks named outright, not by a pattern."""
        return tuple(t for t in self.tasks if "*" not in t)


def parse(argv: list[str]) -> Invocation:
    """argv: the command line without the program's name."""
    try:
        _, rest = CmdParse([CmdOption(opt) for opt in DodoTaskLoader.cmd_options]).parse_only(argv)
    except CmdParseError:
        rest = argv
    args = [arg for arg in rest if arg.startswith("-") or "=" not in arg]
    commands = {cls.get_name(): cls for cls in DoitMain.DOIT_CMDS}
    if args and args[0] in commands:
        command, args = args[0], args[1:]
    else:
        command = "run"
    if command not in NAMING_COMMANDS:
        return Invocation(command, ())
    options = (*DoitCmdBase.base_options, *DodoTaskLoader.cmd_options, *commands[command].cmd_options)
    try:
        _, positional = CmdParse([CmdOption(opt) for opt in options]).parse(args)
    except CmdParseError:
        positional = []  # doit says what is wrong with it
    # What follows a task's name and starts with "-" is an option of that task (doit's task params).
    return Invocation(command, tuple(arg for arg in positional if not arg.startswith("-")))
