"""One error policy: a failure a user can act on is one clear message naming the
task, what failed and what to read; a traceback only for a bug.

Each case is a real failure of a real part: a command that fails (mkfs.vfat),
a program that is missing, a loop device that will not detach after a build
failed, a package list the manifest cannot read. (The accelerator's case is
in test_accel.py.) The last test runs them through doit itself, as a user sees them.
"""

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tasks import actions
from tasks.errors import StageFailed
from tasks.release import instancetest
from tasks.stages import fai, manifest
from tasks.system import proc

REPO = Path(__file__).resolve().parent.parent


def seed_over_a_directory(directory: Path) -> None:
    (directory / "seed.img").mkdir()  # mkfs.vfat will not make its image over it
    instancetest.make_seed(directory, "release-test", "ssh-ed25519 AAAA test")


def test_a_stage_stopped_by_a_signal_ends_interrupted_whatever_its_cleanup_raised(monkeypatch):
    def stopped_then_cleanup_failed():
        try:
            raise KeyboardInterrupt("SIGTERM")  # what the stop handler raises in the stage
        finally:
            raise StageFailed("could not detach /dev/loop7")  # a cleanup failure takes its place

    assert isinstance(actions.run_stage("build:x", stopped_then_cleanup_failed), actions.StageFailure)
    monkeypatch.setattr(proc, "_stop_signal", [])
    assert proc.note_stop(signal.SIGTERM) and not proc.note_stop(signal.SIGINT)  # the first one counts
    with pytest.raises(KeyboardInterrupt, match="build:x stopped"):
        actions.run_stage("build:x", stopped_then_cleanup_failed)


def test_a_failed_command_names_itself_and_what_it_said(tmp_path):
    failure = actions.run_stage("release:bookworm-genericcloud-amd64", seed_over_a_directory, tmp_path)
    assert isinstance(failure, actions.StageFailure)
    first, *rest = failure.message.splitlines()
    assert first.startswith("release:bookworm-genericcloud-amd64 failed: mkfs.vfat -n CIDATA -C ")
    assert "exited with status 1" in first
    assert any("already exists" in line for line in rest), "the command's own words follow"


def test_a_missing_program_is_named_with_the_remedy():
    with pytest.raises(StageFailed, match="no-such-image-tool not found: tools/setup-host installs"):
        proc.run(["no-such-image-tool", "--version"])


def test_a_command_failure_survives_the_trip_from_a_worker():
    """doit's worker processes send failures to the main process pickled."""
    import pickle

    failure = proc.CommandFailed(["tar", "--create"], 2, "tar: disk.raw: Cannot open\n")
    copy = pickle.loads(pickle.dumps(failure))
    assert str(copy) == str(failure) and copy.returncode == 2
    logged = fai.BuildFailed("it failed", log=Path("/tmp/build.log"))
    assert pickle.loads(pickle.dumps(logged)).log == Path("/tmp/build.log")


def test_unreadable_package_list_names_the_file_and_line(nocloud):
    cell, files = nocloud
    files.packages.write_text("base-files\t12.4\tamd64\nbash 5.2 amd64\n")
    failure = actions.run_stage(f"manifest:{cell.name}", manifest.write, cell, files)
    assert failure is not None
    assert failure.message.startswith(
        f"manifest:{cell.name} failed: {files.packages}:2: expected "
        "name<TAB>version<TAB>architecture, got 'bash 5.2 amd64'"
    )
    assert failure.log == str(files.packages)


def test_doit_shows_failures_in_one_message_and_tracebacks_for_bugs_only(tmp_path):
    (tmp_path / "dodo.py").write_text(
        textwrap.dedent(f"""
        import sys
        from pathlib import Path
        sys.path.insert(0, {str(REPO)!r})
        from tasks import actions
        from tests.test_errors import seed_over_a_directory

        DOIT_CONFIG = {{"dep_file": {str(tmp_path / ".doit.db")!r}, "backend": "sqlite3", "verbosity": 2,
                       "continue": True}}

        def a_bug():
            raise ValueError("a bug in the stage")

        def task_seed():
            directory = Path({str(tmp_path)!r}) / "seed"
            directory.mkdir(exist_ok=True)
            return {{"actions": [(actions.run_stage, ["release:x", seed_over_a_directory, directory])]}}

        def task_bug():
            return {{"actions": [(actions.run_stage, ["bug:x", a_bug])]}}
        """)
    )
    seed = subprocess.run(
        [sys.executable, "-m", "doit", "-f", str(tmp_path / "dodo.py"), "seed"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    output = seed.stdout + seed.stderr
    assert seed.returncode != 0
    assert "release:x failed: mkfs.vfat" in output and "already exists" in output
    assert "Traceback" not in output
    bug = subprocess.run(
        [sys.executable, "-m", "doit", "-f", str(tmp_path / "dodo.py"), "bug"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert bug.returncode != 0
    assert "Traceback" in bug.stdout + bug.stderr and "ValueError: a bug in the stage" in bug.stdout + bug.stderr
