"""The run summary, through doit's real runner with two workers.

A small graph in the shape of ours (stage:cell tasks, a base, a known
failure) whose stages succeed or fail on purpose: the run goes on past a
failed cell, skips that cell's later stages, ends non-zero, and prints and
writes the table. The real graph's summary is checked end to end in
test_end_to_end.py.
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from tasks import summary

REPO = Path(__file__).resolve().parent.parent
# The unit tests' own matrix (tests/data/matrix.yaml), not the project's.
FIXTURE_MATRIX = REPO / "tests" / "data" / "matrix.yaml"
GOOD, BAD, KNOWN = "bookworm-nocloud-amd64", "bookworm-genericcloud-amd64", "trixie-ec2-amd64"


def small_graph(tmp_path: Path) -> Path:
    dodo = tmp_path / "dodo.py"
    dodo.write_text(
        textwrap.dedent(f"""
        import sys
        from pathlib import Path
        sys.path.insert(0, {str(REPO)!r})
        from tasks import actions, graph, summary
        from tasks.model import matrix
        from tasks.errors import StageFailed
        from tasks.model.matrix import KnownFailure

        WORK = Path({str(tmp_path)!r})
        MATRIX = matrix.load(Path({str(FIXTURE_MATRIX)!r}))
        DOIT_CONFIG = {{"dep_file": str(WORK / ".doit.db"), "backend": "sqlite3", "verbosity": 2,
                       "continue": True, "num_process": 2, "default_tasks": ["publish"],
                       "reporter": summary.reporter_for(MATRIX, WORK / "run-summary.json")}}

        def make(path):
            Path(path).write_text("made")

        def fail(log):
            Path(log).write_text("E: Unable to locate package does-not-exist")
            raise StageFailed("fai-diskimage failed (exit status 1)", log=Path(log))

        def task_base():
            yield {{"name": "bookworm-amd64", "actions": [(make, [WORK / "base"])], "targets": [str(WORK / "base")],
                   "uptodate": [True]}}

        def task_build():
            yield {{"name": "{GOOD}", "actions": [(actions.run_stage, ["build:{GOOD}", make, WORK / "good"])],
                   "file_dep": [str(WORK / "base")], "targets": [str(WORK / "good")]}}
            yield {{"name": "{BAD}", "actions": [(actions.run_stage, ["build:{BAD}", fail, WORK / "bad.log"])],
                   "file_dep": [str(WORK / "base")]}}

        def task_publish():
            for cell in ("{GOOD}", "{BAD}"):
                yield {{"name": cell, "actions": [(make, [WORK / f"published-{{cell}}"])],
                       "task_dep": [f"build:{{cell}}"], "targets": [str(WORK / f"published-{{cell}}")],
                       "uptodate": [True]}}
            yield {{"name": None, "task_dep": ["publish:{GOOD}", "publish:{BAD}", "xfail-publish:{KNOWN}"]}}

        def task_xfail_publish():
            known = KnownFailure("{KNOWN}", "waagent is not installable")
            chain = [("build", fail, [WORK / "known.log"]), ("publish", make, [WORK / "never"])]
            yield {{"basename": "xfail-publish", "name": "{KNOWN}",
                    "actions": [(graph.run_allowed_failure, ["{KNOWN}", "publish", chain, known,
                                                             str(WORK / "xfail.json")])],
                    "targets": [str(WORK / "xfail.json")]}}
        """)
    )
    return dodo


def run(dodo: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "doit", "-f", str(dodo), *args],
        capture_output=True,
        text=True,
        cwd=dodo.parent,
        timeout=120,
    )


def test_a_failed_cell_stops_nothing_else_and_the_run_ends_with_a_table(tmp_path):
    dodo = small_graph(tmp_path)
    result = run(dodo)
    assert result.returncode != 0, "an unexpected failure fails the run"
    assert (tmp_path / f"published-{GOOD}").exists(), "the other cell went all the way"
    assert not (tmp_path / f"published-{BAD}").exists()
    record = json.loads((tmp_path / "run-summary.json").read_text())
    stages = {cell: {s: e["outcome"] for s, e in row["stages"].items()} for cell, row in record["cells"].items()}
    assert stages[GOOD] == {"base": "done", "build": "done", "publish": "done"}
    assert stages[BAD] == {"base": "done", "build": "failed", "publish": "skipped"}
    # A known failure's chain covers every stage up to the one named: after the failure, skipped.
    assert stages[KNOWN] == {
        "build": "expected failure",
        "sbom": "skipped",
        "compress": "skipped",
        "boottest": "skipped",
        "manifest": "skipped",
        "provenance": "skipped",
        "publish": "skipped",
    }
    assert record["cells"][BAD]["stages"]["build"]["log"] == str(tmp_path / "bad.log")
    assert (
        record["cells"][BAD]["stages"]["build"]["message"]
        == f"build:{BAD} failed: fai-diskimage failed (exit status 1)"
    )
    assert record["failed"] == [BAD]
    assert record["totals"] == {"done": 4, "failed": 1, "skipped": 7, "expected failure": 1}

    table = result.stdout[result.stdout.index("run summary:") :].splitlines()
    columns = ["build", "sbom", "compress", "boottest", "manifest", "provenance", "publish"]
    assert table[1].split() == ["cell", "base", *columns]
    bad_row = next(line for line in table if line.startswith(BAD))
    assert "failed: bad.log" in bad_row and "skipped" in bad_row, "the failed stage names its log"
    assert table[-1].startswith("3 cells (1 expected failure, 1 failed, 1 ok); stages: 4 done, 1 failed, ")
    assert "wall time" in table[-1]
    assert "Unmet dependency" not in result.stdout, "a skipped stage is said once, in the table"

    again = run(dodo, f"publish:{GOOD}")
    assert again.returncode == 0 and "run summary" not in again.stdout, "nothing ran: no table"


def test_the_table_on_a_terminal_is_rich():
    record = {
        "seconds": 12.0,
        "stages": ["build"],
        "totals": {"done": 1},
        "cells": {GOOD: {"status": "ok", "stages": {"build": {"outcome": "done"}}}},
    }
    text = summary.render(record, Path("/"), interactive=True)
    assert GOOD in text and "\x1b[" in text and "1 cells (1 ok); stages: 1 done; wall time 12 s" in text
