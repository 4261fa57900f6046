"""The doit command line: listing tasks, and refusing a bad matrix before any task."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
# The unit tests' own matrix (tests/data/matrix.yaml), not the project's.
FIXTURE_MATRIX = REPO / "tests" / "data" / "matrix.yaml"


def doit(*args, cwd=REPO):
    return subprocess.run(
        [sys.executable, "-m", "doit", "-f", str(REPO / "dodo.py"), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
    )


def test_list_shows_every_stage_of_every_cell(tmp_path, test_matrix):
    result = doit("list", "--all", "--quiet", f"workdir={tmp_path}", f"matrix={FIXTURE_MATRIX}")
    assert result.returncode == 0, result.stderr
    names = set(result.stdout.split())
    for cell in test_matrix.cells:
        for stage in ("base", "build", "compress", "boottest", "manifest", "publish", "release"):
            assert f"{stage}:{cell.base_name if stage == 'base' else cell.name}" in names
    assert {"base", "build", "compress", "boottest", "manifest", "publish", "release"} <= names


def test_bad_matrix_gives_one_line_and_no_tasks(tmp_path):
    data = yaml.safe_load((FIXTURE_MATRIX).read_text())
    data["vendors"]["genericcloud"]["disk_size"] = "two gigs"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data, sort_keys=False))
    result = doit("list", f"matrix={bad}", f"workdir={tmp_path / 'w'}")
    assert result.returncode != 0
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"error: {bad}: vendors.genericcloud.disk_size: expected a size such as 2G or 512M, got 'two gigs'"
    ]


def test_bad_option_gives_one_line(tmp_path):
    result = doit("list", "tier=nightly", f"workdir={tmp_path}")
    assert result.returncode != 0 and result.stdout == ""
    assert result.stderr.strip().endswith("tiers: no tier named 'nightly' (expected one of: push, full)")


def test_misspelt_option_is_refused(tmp_path):
    result = doit("list", f"worddir={tmp_path}")
    assert result.returncode != 0 and result.stdout == ""
    from tasks.model.options import BY_NAME

    assert result.stderr.strip().splitlines() == [
        f"error: command line: worddir: unknown option (expected one of: {', '.join(BY_NAME)})"
    ]


def test_state_database_is_sqlite(tmp_path):
    result = doit("forget", "build:bookworm-nocloud-amd64", f"workdir={tmp_path}")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / ".doit.db").read_bytes()[:16] == b"SQLite format 3\x00"


def test_second_run_in_one_workdir_stops_and_names_the_first(tmp_path):
    """Two runs in one work directory would clash; a reading command still works."""
    workdir = tmp_path / "w"
    (tmp_path / "waiting_dodo.py").write_text(f"""
import sys, time
sys.path.insert(0, {str(REPO)!r})
import dodo as images  # takes the work directory as a real run does

DOIT_CONFIG = {{**images.DOIT_CONFIG, "default_tasks": ["wait"]}}

def pause():
    print("running", flush=True)
    time.sleep(60)

def task_wait():
    return {{"actions": [(pause,)], "uptodate": [False]}}
""")
    first = subprocess.Popen(
        [sys.executable, "-m", "doit", "-f", str(tmp_path / "waiting_dodo.py"), f"workdir={workdir}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    try:
        # The action's own line: doit's title of the task may come before it, or (Python 3.13) after it ends.
        assert first.stdout is not None
        assert any("running" in line for line in first.stdout), "the first run's task started"
        second = doit("forget", f"workdir={workdir}")
        assert second.returncode == 2 and second.stdout == ""
        assert second.stderr.strip() == (
            f"error: {workdir} is in use by another doit run (pid {first.pid}): "
            "wait for it to finish, or give this run its own workdir="
        )
        assert doit("list", f"workdir={workdir}").returncode == 0, "listing needs no lock"
    finally:
        first.terminate()
        first.communicate(timeout=30)
    # the kernel dropped the lock with the first run
    after = doit("forget", f"workdir={workdir}")
    assert after.returncode == 0, after.stderr


def test_the_command_line_is_read_as_doit_reads_it():
    from tasks import cmdline

    assert cmdline.parse([]) == cmdline.Invocation("run", ())
    assert cmdline.parse(["-n", "2", "boottest"]) == cmdline.Invocation("run", ("boottest",))
    assert cmdline.parse(["tier=full", "list", "--all"]).command == "list"
    assert cmdline.parse(["-f", "dodo.py", "-d", ".", "info", "build"]).command == "info"
    assert cmdline.parse(["--file=dodo.py", "build:x", "-a"]) == cmdline.Invocation("run", ("build:x",))
    assert cmdline.parse(["run", "--single", "publish:*", "storage=/x"]).wildcards == ("publish:*",)
    assert cmdline.parse(["verify", "image=a", "key=b"]).only(frozenset({"verify"}))
    assert not cmdline.parse(["verify", "build:x"]).only(frozenset({"verify"}))
    assert not cmdline.parse([]).only(frozenset({"verify"})), "the default tasks are not these"


def test_reading_commands_create_nothing(tmp_path):
    workdir = tmp_path / "not-yet"
    for args in (["list", "--all"], ["info", "build:bookworm-nocloud-amd64"], ["verify"], ["changes"]):
        doit(*args, f"workdir={workdir}", f"storage={tmp_path / 'storage'}")
        assert not workdir.exists() and not (tmp_path / "storage").exists(), args


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["build:nothing-*"],
            "error: command line: no task matches 'build:nothing-*' (`doit list --all` names them all)",
        ),
        (
            ["workdir=/proc/images", "build"],
            "error: command line: workdir: /proc/images cannot be the work directory: ",
        ),
        (
            ["workdir=/etc/hostname", "build"],
            "error: command line: workdir: /etc/hostname cannot be the work directory: not a directory",
        ),
        (["version=latest"], "error: command line: version: expected a version YYYYMMDD-N"),
        (["storage=https://images.example.org/x#top"], "error: command line: storage: a storage URL has no #fragment"),
    ],
)
def test_command_line_mistakes_are_one_line(tmp_path, args, message):
    given = [f"workdir={tmp_path / 'w'}", *args] if not any(a.startswith("workdir=") for a in args) else args
    result = doit(*given)
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith(message), result.stderr


def test_loading_the_graph_imports_no_client_library(tmp_path):
    """Every doit run, a no-op too, loads the graph: the HTTP, cloud and Debian-format libraries the
    stages use are imported where a stage runs, not then (they cost a no-op run a third of its time)."""
    script = f"""
import sys
sys.argv = ["doit", "workdir={tmp_path}", "tier=full"]
sys.path.insert(0, {str(REPO)!r})
import dodo
list(dodo.task_build())
heavy = {{"requests", "urllib3", "boto3", "botocore", "debian", "smtplib"}}
print(" ".join(sorted(name for name in sys.modules if name.split(".")[0] in heavy)))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == []


def test_an_unknown_cell_in_verify_or_changes_is_one_line(tmp_path):
    for args in (["verify", "image=bookworm-nothing-amd64", "key=k.asc"], ["changes", "left=nothing", "right=x"]):
        result = doit(*args, f"workdir={tmp_path / 'w'}", f"storage={tmp_path / 's'}")
        assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr
        failed = [line for line in result.stdout.splitlines() if " failed: " in line]
        assert len(failed) == 1 and "is no cell of matrix.yaml" in failed[0], result.stdout


def _wrong_names() -> list[list[str]]:
    """A wrong name for every command a user runs: doit's own, each stage's and on-demand task's, and each option."""
    from tasks import commands, registry

    stages = [[f"{stage.name}:nothing-at-all"] for stage in registry.stages()]
    on_demand = [[f"{command.NAME}:nothing-at-all"] for command in commands.COMMANDS]
    subcommands = [[command, "nothing-at-all"] for command in ("info", "list", "clean", "forget", "ignore")]
    cells = [
        ["verify", "image=bookworm-nothing-amd64", "key=k.asc"],
        ["verify", "image=bookworm-nothing-amd64@20261207-1", "key=k.asc"],
        ["changes", "left=nothing", "right=bookworm-nocloud-amd64"],
        ["changes", "left=nothing@20261207-1", "right=bookworm-nocloud-amd64"],
        ["compare", "left=nothing", "right=bookworm-nocloud-amd64"],
        ["ci", "cells=nothing-*"],
    ]
    options = [["tier=nothing"], ["nothing=yes"], ["xz_level=nothing"], ["confirm=nothing"], ["builder=nothing:13"]]
    return [*stages, *on_demand, *subcommands, *cells, *options]


@pytest.mark.parametrize("args", _wrong_names(), ids=" ".join)
def test_a_wrong_name_anywhere_is_one_line_and_no_traceback(tmp_path, args):
    """Every user-facing command, given a name that does not exist, fails and says so in one line."""
    result = doit(*args, f"workdir={tmp_path / 'w'}", f"storage={tmp_path / 's'}")
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in output, output
    said = [line for line in output.splitlines() if re.match(r"error: | *\S+ failed: |\S+: no image facts", line)]
    assert len(said) == 1 and "nothing" in said[0], output
