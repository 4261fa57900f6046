"""doit's state survives its database (tasks/taskstate.py), and records that do not read are made
again (tasks/model/records.py), through real doit runs of a cheap stage over a cell's files."""

import json
import shutil
import subprocess
import sys

import pytest

from tasks.model import records
from tasks.model.records import BootRecord, Manifest, PublishReceipt, RecordError, RecordsReadable

from .conftest import REPO, fake_outputs

CELL = "bookworm-nocloud-amd64"
TASK = f"manifest:{CELL}"


def doit(workdir, *args):
    result = subprocess.run(
        [sys.executable, "-m", "doit", "-f", str(REPO / "dodo.py"), *args, f"workdir={workdir}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Traceback" not in result.stdout + result.stderr, result.stdout + result.stderr
    return result


def ran(result) -> bool:
    return f".  {TASK}" in result.stdout


def fresh(result) -> bool:
    return f"-- {TASK}" in result.stdout


@pytest.fixture
def workdir(repo_matrix, tmp_path):
    """A work directory whose cell has all the manifest reads, and a manifest made by doit."""
    fake_outputs(tmp_path / "build", repo_matrix.cell(CELL))
    first = doit(tmp_path / "build", "--single", TASK)
    assert first.returncode == 0 and ran(first), first.stdout + first.stderr
    return tmp_path / "build"


def test_each_task_keeps_its_state_beside_its_targets_in_portable_form(workdir):
    kept = json.loads((workdir / CELL / ".doit-state" / f"{TASK}.json").read_text())
    assert kept["task"] == TASK and kept["saved"]["checker:"] == "XXH3Checker"
    assert str(workdir) not in json.dumps(kept), "paths are relative to the work directory"
    assert "$WORKDIR/bookworm-nocloud-amd64/build-info.json" in kept["files"]
    assert fresh(doit(workdir, "--single", TASK))


def test_a_lost_database_makes_nothing_run_again(workdir):
    (workdir / ".doit.db").unlink()
    again = doit(workdir, "--single", TASK)
    assert again.returncode == 0 and fresh(again) and not ran(again)


def test_a_damaged_database_is_set_aside_with_one_warning(workdir):
    (workdir / ".doit.db").write_bytes(b"\x00garbage" * 500)
    again = doit(workdir, "--single", TASK)
    assert again.returncode == 0 and fresh(again), again.stdout + again.stderr
    assert "warning" not in again.stdout, "on stderr: doit's own output stays what it is"
    warnings = [line for line in again.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and f"{workdir / '.doit.db'} is damaged (file is not a database)" in warnings[0]
    aside = list(workdir.glob(".doit.db.damaged-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"\x00garbage"), "kept for whoever investigates"


def test_a_moved_work_directory_makes_nothing_run_again(workdir, tmp_path):
    moved = tmp_path / "elsewhere" / "build"
    moved.parent.mkdir()
    shutil.copytree(workdir, moved)  # a copy: new times, the same bytes
    shutil.rmtree(workdir)
    again = doit(moved, "--single", TASK)
    assert again.returncode == 0 and fresh(again), again.stdout + again.stderr
    assert f"note: {moved} was at {workdir}" in again.stderr


def test_a_changed_input_still_runs_the_task_without_the_database(workdir):
    (workdir / ".doit.db").unlink()
    (workdir / CELL / "packages.tsv").write_text("base-files\t12.4+deb12u9\tamd64\n")
    assert ran(doit(workdir, "--single", TASK))


def test_forget_still_forgets(workdir):
    assert doit(workdir, "forget", TASK).returncode == 0
    assert ran(doit(workdir, "--single", TASK))


def test_a_reading_command_reads_the_records_and_writes_no_database(workdir):
    (workdir / ".doit.db").unlink()
    listed = doit(workdir, "list", "--all", "--status")
    assert f"U {TASK}" in listed.stdout, listed.stdout
    assert not (workdir / ".doit.db").exists()


def test_a_damaged_record_is_made_again_and_the_log_says_why(workdir):
    manifest = workdir / CELL / "manifest.json"
    manifest.write_bytes(bytes(range(256)) * 4)
    again = doit(workdir, "--single", TASK)
    assert again.returncode == 0 and ran(again)
    assert f"{manifest}: not text (damaged?): made again" in again.stdout
    assert Manifest.read(manifest).name.startswith("debian-12-nocloud-amd64-")
    assert fresh(doit(workdir, "--single", TASK))


@pytest.mark.parametrize(
    "content, kind, why",
    [
        (b"\xff\xfe\x00binary", Manifest, "not text (damaged?)"),
        (b'{"cell": "x", "verdict": "passed"', BootRecord, "not JSON (Expecting ',' delimiter"),
        (b"[]", BootRecord, "expected a boottest record, got list"),
        (
            b'{"record": "published/2", "storage": 5, "directory": "d"}',
            PublishReceipt,
            "storage: expected str, got int",
        ),
        (b'{"record": "published/2", "storage": "s"}', PublishReceipt, "the published record lacks directory"),
    ],
)
def test_a_record_that_does_not_read_is_one_line(tmp_path, content, kind, why):
    path = tmp_path / "record.json"
    path.write_bytes(content)
    with pytest.raises(RecordError) as caught:
        kind.read(path)
    assert str(caught.value).startswith(f"{path}: {why}") and "\n" not in str(caught.value)


def test_the_records_check_reads_a_record_only_when_it_changed(tmp_path, monkeypatch):
    path = tmp_path / "boottest.json"
    path.write_text(json.dumps({"cell": "c", "verdict": "passed", "passed": True, "boots": []}))
    check = RecordsReadable([(path, BootRecord)])

    class Task:
        value_savers: list = []

    check.configure_task(Task)
    saved = Task.value_savers[0]()
    reads = []
    monkeypatch.setattr(records, "problem", lambda p, k: reads.append(p))
    assert check(None, saved) and not reads, "as the stage left it: not read"
    path.write_text(json.dumps({"cell": "c", "verdict": "passed", "passed": True, "boots": [], "side_by_side": 2}))
    assert check(None, saved) and reads == [path], "changed since: read, and it reads"
    monkeypatch.undo()
    path.write_text('{"cell": "c", "verdi')
    assert not check(None, saved), "damaged: the stage runs again"
    path.unlink()
    assert check(None, saved), "missing: doit makes a missing target itself"
