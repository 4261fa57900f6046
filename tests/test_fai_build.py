"""The build stage with real FAI: failures and interruptions.

These tests start real builds (FAI into a tmpfs of the build's sandbox, the disk
assembled from files: no loop device and no mount of an image) and stop them
within seconds, so they belong to the quick suite. They need root, like every
image build.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks.model.layout import CellFiles
from tasks.stages import fai

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="image builds need root")


def loop_devices_of(workdir: Path) -> list[str]:
    """Loop devices whose backing file is, or was before it was deleted, under workdir
    (other builds, the arm64 end-to-end run among them, may have theirs attached meanwhile)."""
    out = subprocess.run(
        ["losetup", "--list", "--json", "--output", "NAME,BACK-FILE"], capture_output=True, text=True, check=True
    ).stdout
    devices = json.loads(out)["loopdevices"] if out.strip() else []
    return sorted(d["name"] for d in devices if (d.get("back-file") or "").startswith(f"{workdir}/"))


def leftovers(workdir: Path) -> dict:
    """Everything a build must not leave behind in or about workdir."""
    mounts = [
        line.split()[1] for line in Path("/proc/mounts").read_text().splitlines() if str(workdir) in line.split()[1]
    ]
    processes = subprocess.run(["pgrep", "-af", str(workdir)], capture_output=True, text=True).stdout.splitlines()
    partials = [str(p) for p in workdir.rglob("*") if ".partial" in p.name]
    return {
        "loop devices": loop_devices_of(workdir),
        "mounts": mounts,
        "processes": [p for p in processes if "pytest" not in p],
        "partial files": partials,
        "staging": [str(p) for p in workdir.rglob(".build")],
    }


NOTHING: dict[str, list] = {"loop devices": [], "mounts": [], "processes": [], "partial files": [], "staging": []}


def test_failed_build_names_its_log_and_cleans_up(tmp_path, test_matrix):
    space = tmp_path / "fai_config"
    shutil.copytree(REPO / "fai_config", space, symlinks=True)
    hook = space / "hooks" / "partition.DEBIAN"
    hook.write_text(hook.read_text().replace("type=$IMAGE_BIOS_PARTITION_TYPE", "type=NOT-A-TYPE"))
    cell = test_matrix.cell("bookworm-nocloud-amd64")
    files = CellFiles.of(tmp_path / "build", cell)

    base = tmp_path / "empty-base.tar.zst"  # never read: the build fails before it unpacks the base
    base.touch()
    inputs = fai.BuildInputs(
        space, base, tmp_path / "apt", tmp_path / "steps", "1", tmp_path / "cpu", tmp_path / "tools"
    )
    with pytest.raises(fai.BuildFailed) as caught:
        fai.build(cell, files, test_matrix.build, inputs)
    message = str(caught.value)
    assert f"full log: {files.build_log}" in message
    assert "Failed to add #1 partition" in message  # sfdisk's own words, among the relevant lines
    assert "partition.DEBIAN     FAILED with exit code 1" in files.build_log.read_text()
    assert not files.raw.exists() and not files.packages.exists() and not files.build_info.exists()
    assert leftovers(tmp_path) == NOTHING


_STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def stop_builds_left_running():
    """A test that fails half-way must not leave its build running."""
    yield
    while _STARTED:
        child = _STARTED.pop()
        if child.poll() is None:
            child.terminate()
            child.communicate(timeout=120)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_build(workdir: Path, jobs: int = 2) -> subprocess.Popen:
    # --single: without the base system (a minute of debootstrap); FAI then
    # runs debootstrap itself, which the tests interrupt. With jobs > 0 the
    # build runs in a doit worker process, with 0 in doit's main process.
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "doit",
            "-f",
            str(REPO / "dodo.py"),
            "-n",
            str(jobs),
            "--single",
            "build:bookworm-nocloud-amd64",
            f"workdir={workdir}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "IMAGES_PROGRESS_INTERVAL": "1"},
        # A shell runs a command started with & with SIGINT ignored, and Python
        # keeps it ignored: give doit the SIGINT a terminal's Ctrl-C would reach.
        preexec_fn=_default_sigint,
    )
    _STARTED.append(child)
    return child


def wait_for(child: subprocess.Popen, text: str, timeout: float = 120) -> list[str]:
    seen = []
    deadline = time.monotonic() + timeout
    assert child.stdout is not None
    for line in child.stdout:
        seen.append(line)
        if text in line:
            return seen
        if time.monotonic() > deadline:
            break
    child.kill()
    pytest.fail(f"never saw {text!r}:\n{''.join(seen)}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_interrupted_build_leaves_nothing_attached_or_half_written(tmp_path, sig):
    workdir = tmp_path / "build"
    child = start_build(workdir)
    wait_for(child, "FAI task extrbase")  # the disk file is partitioned by now
    cell_dir = workdir / "bookworm-nocloud-amd64"
    assert (cell_dir / ".build" / "disk.raw").is_file(), "the build should have begun its disk"
    assert loop_devices_of(tmp_path) == [], "and attached no loop device for it"
    child.send_signal(sig)
    output = child.communicate(timeout=120)[0]
    assert child.returncode != 0, output
    assert leftovers(tmp_path) == NOTHING, output
    assert not (cell_dir / "disk.raw").exists(), output
    assert (cell_dir / "build.log").read_text().rstrip().endswith("# build interrupted; this log is incomplete"), output


def test_worker_stops_its_build_when_doit_is_killed(tmp_path):
    """doit's main process killed outright (SIGKILL): the worker running the build cleans up."""
    workdir = tmp_path / "build"
    child = start_build(workdir, jobs=2)
    wait_for(child, "FAI task extrbase")
    assert (workdir / "bookworm-nocloud-amd64" / ".build" / "disk.raw").is_file()
    child.kill()
    child.wait()
    assert _eventually(lambda: leftovers(tmp_path) == NOTHING), leftovers(tmp_path)
    assert not (workdir / "bookworm-nocloud-amd64" / "disk.raw").exists()


def test_build_killed_outright_is_cleaned_up_by_the_next_run(tmp_path):
    workdir = tmp_path / "build"
    cell_dir = workdir / "bookworm-nocloud-amd64"
    child = start_build(workdir, jobs=0)  # no worker processes: the build runs in the process we kill
    wait_for(child, "FAI task extrbase")
    child.kill()  # SIGKILL: no handler runs; the kernel kills the sandbox with it
    child.wait()
    # The namespaces die with the build, and every mount and the tree's tmpfs with them;
    # no loop device was ever attached...
    assert _eventually(lambda: not leftovers(tmp_path)["processes"]), leftovers(tmp_path)
    assert not leftovers(tmp_path)["mounts"] and not leftovers(tmp_path)["loop devices"]
    # ... only the half-made disk is left, in the staging directory, never under a final name.
    assert (cell_dir / ".build" / "disk.raw").is_file() and not (cell_dir / "disk.raw").exists()
    # The next build of that cell removes it before it starts.
    child = start_build(workdir, jobs=0)
    wait_for(child, "FAI task partition")
    child.send_signal(signal.SIGTERM)
    child.communicate(timeout=120)
    assert leftovers(tmp_path) == NOTHING


def _eventually(predicate, timeout=30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_phase_clock_times_each_task_hook_and_script_from_fai_output():
    ticks = iter([0.0, 2.0, 5.0, 5.5, 9.0, 19.0, 19.25, 20.0])
    clock = fai.PhaseClock(clock=lambda: next(ticks))
    for line in [
        "Calling hook: updatebase.DEBIAN",
        "Get:1 http://deb.debian.org/debian bookworm InRelease",  # not a phase: its time stays in the hook's
        "Calling task_updatebase",
        "Source hook: debconf.DEBIAN.sh",
        "Calling task_configure",
        "Executing           shell: DEBIAN/20-initramfs",
        "Executing   shell: LAST/90-clean",
    ]:
        started = clock.line(line)
        assert started == (line.removeprefix("Calling task_") if line.startswith("Calling task_") else None)
    assert clock.finished() == {
        "start": 2.0,
        "hook updatebase.DEBIAN": 3.0,
        "task updatebase": 0.5,
        "hook debconf.DEBIAN.sh": 3.5,
        "task configure": 10.0,
        "script DEBIAN/20-initramfs": 0.2,
        "script LAST/90-clean": 0.8,
    }
