"""The run summary: at the end of a run, what happened to every cell, stage by stage.

A doit reporter (DOIT_CONFIG["reporter"]) that keeps doit's console output
and records each task's outcome as doit's runner reports it: done, up to
date, failed (with the log the failure names), skipped (a stage before it
failed: doit's "unmet dependency"), expected failure or unexpected success
(known-failing cells, from their xfail record), not run (the run was
interrupted first). At the end of a run that executed anything it prints one
table, a row per cell and a column per stage (rich on a terminal, plain text
in CI logs), then a line of totals and the wall time, and writes the same as
run-summary.json in the work directory.

With ``doit -n N`` every callback runs in doit's main process: workers send
their results there.
"""

from __future__ import annotations

import enum
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from doit.exceptions import UnmetDependency
from doit.globals import Globals
from doit.reporter import ConsoleReporter

from tasks import registry, taskstate
from tasks.model.matrix import XFAIL_PREFIX, KnownFailure, Matrix
from tasks.system import atomic

STARTED = time.monotonic()  # dodo.py imports this module as the run starts


class Outcome(enum.Enum):
    DONE = "done"
    UP_TO_DATE = "up to date"
    FAILED = "failed"
    SKIPPED = "skipped"
    EXPECTED_FAILURE = "expected failure"
    UNEXPECTED_SUCCESS = KnownFailure.UNEXPECTED_SUCCESS
    INTERRUPTED = "interrupted"  # it was running when the run was stopped
    NOT_RUN = "not run"  # the run was stopped before it began


@dataclass
class Result:
    outcome: Outcome
    log: str | None = None
    message: str | None = None  # the failure's first line

    def to_json(self) -> dict:
        data = {"outcome": self.outcome.value}
        if self.log:
            data["log"] = self.log
        if self.message:
            data["message"] = self.message
        return data

    def text(self, relative_to: Path) -> str:
        if self.outcome is Outcome.FAILED and self.log:
            return f"failed: {_shorter(Path(self.log), relative_to)}"
        return self.outcome.value


def _shorter(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


def reporter_for(matrix: Matrix, record: Path | None, places: taskstate.Places | None = None):
    """The reporter class doit instantiates for a run over matrix's cells.

    The table's columns are the registry's stages (tasks/registry.py).
    record: where the summary is written (run-summary.json); None: nowhere.
    places: where tasks' state is kept beside their targets (tasks/taskstate.py); None: nowhere.
    """

    class Reporter(RunSummary):
        pass

    Reporter.matrix, Reporter.record, Reporter.places = matrix, record, places
    return Reporter


class RunSummary(ConsoleReporter):
    desc = "console output, then a summary table of every cell"
    matrix: Matrix
    record: Path | None
    places: taskstate.Places | None = None

    @property
    def columns(self) -> tuple[str, ...]:
        """Every stage, in the order a cell goes through them."""
        return tuple(stage.name for stage in registry.stages())

    @property
    def stages(self) -> tuple[str, ...]:
        """The chain a known failure's xfail task runs."""
        return tuple(stage.name for stage in registry.cell_chain())

    @property
    def base_stages(self) -> set[str]:
        return {stage.name for stage in registry.stages() if stage.scope is registry.Scope.BASE}

    def __init__(self, outstream, options):
        super().__init__(outstream, options)
        self.results: dict[tuple[str, str], Result] = {}  # (cell, stage) -> result
        self.expected: set[tuple[str, str]] = set()  # what the run was to do
        self.started: set[tuple[str, str]] = set()
        self.executed = False
        self.run_cells: set[str] = set()  # the cells whose stages this run was asked for
        self.bases: dict[str, list[str]] = {}  # base name -> its cells
        for cell in self.matrix.cells:
            self.bases.setdefault(cell.base_name, []).append(cell.name)

    # -- what a task name means for the table

    def _places(self, task_name: str) -> list[tuple[str, str]]:
        """The (cell, stage) entries a task fills; none for group and other tasks."""
        kind, _, name = task_name.partition(":")
        if not name:
            return []
        if kind in self.base_stages:
            # A base serves every cell of its release and architecture; its
            # column shows only in the rows of the cells this run is about.
            return [(cell, kind) for cell in self.bases.get(name, []) if cell in self.run_cells]
        if kind.startswith(XFAIL_PREFIX):
            last = kind.removeprefix(XFAIL_PREFIX)
            if last not in self.stages:
                return []
            # A known failure's task runs the cell's stages up to that one.
            return [(name, stage) for stage in self.stages[: self.stages.index(last) + 1]]
        if kind in self.columns:
            return [(name, kind)]
        return []

    def _set(self, task, outcome: Outcome, log: str | None = None, message: str | None = None) -> None:
        places = self._places(task.name)
        if task.name.startswith(XFAIL_PREFIX) and outcome in (Outcome.DONE, Outcome.UP_TO_DATE):
            self._set_known_failure(task, places, outcome)
            return
        for place in places:
            self.results[place] = Result(outcome, log, message)

    def _set_known_failure(self, task, places, ran: Outcome) -> None:
        """An xfail task succeeds either way: its record says how the cell fared."""
        try:
            record = json.loads(Path(task.targets[0]).read_text())
        except (OSError, ValueError, IndexError):
            record = {}
        failed_at = record.get("failed_stage") if record.get("outcome") == KnownFailure.FAILED_AS_EXPECTED else None
        seen_failure = False
        for cell, stage in places:
            if failed_at:
                outcome = Outcome.EXPECTED_FAILURE if stage == failed_at else Outcome.SKIPPED if seen_failure else ran
                seen_failure = seen_failure or stage == failed_at
            elif record.get("outcome") == KnownFailure.UNEXPECTED_SUCCESS and (cell, stage) == places[-1]:
                outcome = Outcome.UNEXPECTED_SUCCESS
            else:
                outcome = ran
            message = record.get("message", "").split("\n")[0] if outcome is Outcome.EXPECTED_FAILURE else ""
            self.results[(cell, stage)] = Result(outcome, message=message or None)

    # -- doit's callbacks

    def initialize(self, tasks, selected_tasks):
        super().initialize(tasks, selected_tasks)
        # Everything the selected tasks lead to, so that what an interruption
        # left undone shows as "not run".
        pending, seen = list(selected_tasks), set()
        while pending:
            name = pending.pop()
            if name in seen or name not in tasks:
                continue
            seen.add(name)
            pending.extend(tasks[name].task_dep)
            pending.extend(tasks[name].setup_tasks)
        of_bases = {name for name in seen if name.partition(":")[0] in self.base_stages}
        places = [place for name in seen - of_bases for place in self._places(name)]
        self.run_cells = {cell for cell, _ in places}
        self.expected.update(places)
        self.expected.update(place for name in of_bases for place in self._places(name))

    def execute_task(self, task):
        super().execute_task(task)
        if task.actions:
            self.executed = True
            self.started.update(self._places(task.name))

    def add_success(self, task):
        super().add_success(task)
        self._set(task, Outcome.DONE)
        self._keep_state(task)

    def skip_uptodate(self, task):
        super().skip_uptodate(task)
        self._set(task, Outcome.UP_TO_DATE)
        self._keep_state(task, only_if_missing=True)

    def _keep_state(self, task, only_if_missing: bool = False) -> None:
        # doit saved the task's state in its database just before it reported it (in this process).
        if self.places is not None and Globals.dep_manager is not None:
            taskstate.save(task, Globals.dep_manager, self.places, only_if_missing)

    def add_failure(self, task, fail):
        if isinstance(fail, UnmetDependency):
            # A stage before it failed: the summary says "skipped"; doit's
            # own report of it would only repeat that failure.
            self._set(task, Outcome.SKIPPED)
            return
        super().add_failure(task, fail)
        self.executed = True
        lines = [line for line in fail.message.splitlines() if line.strip()]
        self._set(task, Outcome.FAILED, getattr(fail, "log", None), lines[0] if lines else fail.get_name())

    def complete_run(self):
        super().complete_run()
        if not self.executed:
            return  # nothing ran: the console already says every task is up to date
        for place in self.expected:
            self.results.setdefault(place, Result(Outcome.INTERRUPTED if place in self.started else Outcome.NOT_RUN))
        if not self.results:
            return
        summary = self.summary()
        try:
            if self.record is not None:
                atomic.write_json(self.record, summary)
        except OSError as error:
            self.write(f"run summary not written to {self.record}: {error}\n")
        self.write(render(summary, Path.cwd(), interactive=_is_terminal(self.outstream)))

    def summary(self) -> dict:
        cells = sorted({cell for cell, _ in self.results})
        columns = [stage for stage in self.columns if any(s == stage for _, s in self.results)]
        totals: dict[str, int] = {}
        for result in self.results.values():
            totals[result.outcome.value] = totals.get(result.outcome.value, 0) + 1
        rows = {}
        for cell in cells:
            row = {stage: self.results[(cell, stage)].to_json() for stage in columns if (cell, stage) in self.results}
            rows[cell] = {"status": _cell_status(row), "stages": row}
        return {
            "seconds": round(time.monotonic() - STARTED, 1),
            "workdir": str(self.record.parent) if self.record else None,
            "stages": columns,
            "cells": rows,
            "totals": totals,
            "failed": sorted(cell for cell, row in rows.items() if row["status"] == "failed"),
        }


def _cell_status(row: dict) -> str:
    outcomes = [entry["outcome"] for entry in row.values()]
    for status in (
        Outcome.FAILED,
        Outcome.INTERRUPTED,
        Outcome.NOT_RUN,
        Outcome.EXPECTED_FAILURE,
        Outcome.UNEXPECTED_SUCCESS,
    ):
        if status.value in outcomes:
            return status.value
    return "ok"


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty() and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):
        return False


def totals_line(summary: dict) -> str:
    order = [o.value for o in Outcome]
    parts = [f"{summary['totals'][o]} {o}" for o in order if summary["totals"].get(o)]
    statuses: dict[str, int] = {}
    for row in summary["cells"].values():
        statuses[row["status"]] = statuses.get(row["status"], 0) + 1
    cells = ", ".join(f"{n} {status}" for status, n in sorted(statuses.items()))
    return f"{len(summary['cells'])} cells ({cells}); stages: {', '.join(parts)}; wall time {summary['seconds']:.0f} s"


def render(summary: dict, relative_to: Path, interactive: bool = False) -> str:
    """The table and the totals line: rich on a terminal, plain text elsewhere."""
    columns = summary["stages"]
    rows = []
    for cell, row in summary["cells"].items():
        rows.append(
            [cell]
            + [
                Result(Outcome(row["stages"][s]["outcome"]), row["stages"][s].get("log")).text(relative_to)
                if s in row["stages"]
                else ""
                for s in columns
            ]
        )
    if interactive:
        return _render_rich(columns, rows, summary)
    widths = [max(len(text) for text in column) for column in zip(["cell", *columns], *rows, strict=True)]
    lines = ["", "run summary:"]
    for values in [["cell", *columns], *rows]:
        lines.append("  ".join(text.ljust(width) for text, width in zip(values, widths, strict=True)).rstrip())
    lines.append(totals_line(summary))
    return "\n".join(lines) + "\n"


_STYLES = {
    "done": "green",
    "up to date": "dim",
    "skipped": "yellow",
    "not run": "yellow",
    "interrupted": "yellow",
    "expected failure": "magenta",
    "unexpected success": "bold magenta",
}


def _render_rich(columns: list[str], rows: list[list[str]], summary: dict) -> str:
    from rich.console import Console  # imported here: loading the graph never needs rich
    from rich.table import Table

    table = Table(title="run summary", title_justify="left")
    for name in ["cell", *columns]:
        table.add_column(name)
    for values in rows:
        table.add_row(
            values[0],
            *(
                f"[{'bold red' if text.startswith('failed') else _STYLES.get(text, '')}]{text}" if text else ""
                for text in values[1:]
            ),
        )
    console = Console(record=True, width=max(120, Console().width), force_terminal=True)
    with console.capture() as captured:
        console.print(table)
        console.print(totals_line(summary), highlight=False, markup=False)
    return "\n" + captured.get()
