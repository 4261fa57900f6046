"""Foreign programs (tasks/system/binfmt.py): what a foreign build tells qemu-user."""

import os
import shutil
import subprocess
import sys

import pytest

from tasks.model.arch import Arch, Firmware
from tasks.system import binfmt

pytestmark = pytest.mark.skipif(os.uname().machine != "x86_64", reason="written for an amd64 build host")


def test_only_a_foreign_build_names_the_emulated_cpu():
    assert binfmt.environment("amd64") == {}
    assert binfmt.environment("arm64") == {"QEMU_CPU": Arch.ARM64.spec.user_cpu}
    # The build's programs run on the CPU the boot test starts the image on.
    assert Arch.ARM64.spec.user_cpu == Arch.ARM64.spec.machines[Firmware.UEFI].tcg_cpu


@pytest.mark.skipif(not shutil.which("qemu-aarch64-static"), reason="needs qemu-user-static")
def test_qemu_user_accepts_the_emulated_cpu():
    def run(env):
        # An amd64 program: qemu gets as far as loading it only once it has made the CPU.
        return subprocess.run(
            ["qemu-aarch64-static", "/bin/true"], env={**os.environ, **env}, capture_output=True, text=True
        ).stderr

    assert "Invalid ELF image" in run(binfmt.environment("arm64"))
    assert "CPU model" in run({"QEMU_CPU": "no-such-cpu"})  # the check above can fail


# Run in a user and mount namespace of its own: its binfmt_misc is a private instance (Linux 6.7 and
# later), so neither the host's registrations nor other tests are touched. A tmpfs over the mount
# point stands for a host where nothing is mounted yet.
RACE = """
import multiprocessing, subprocess, sys
subprocess.run(["mount", "-t", "tmpfs", "unmounted", "/proc/sys/fs/binfmt_misc"], check=True)
from tasks.system import binfmt

def worker(barrier, results):
    barrier.wait(30)
    try:
        binfmt.ensure("arm64")
        results.put("ok")
    except Exception as error:
        results.put(f"{type(error).__name__}: {error}")

fork = multiprocessing.get_context("fork")
barrier, results = fork.Barrier(2), fork.Queue()
workers = [fork.Process(target=worker, args=(barrier, results)) for _ in range(2)]
for w in workers:
    w.start()
for w in workers:
    w.join(60)
print(sorted(results.get(timeout=5) for _ in workers))
entry = binfmt.BINFMT / "qemu-aarch64"
print(entry.read_text().splitlines()[0])
binfmt.ensure("arm64")  # and when it is done already
entry.write_text("0")  # disabled since
binfmt.ensure("arm64")
print(entry.read_text().splitlines()[0])
"""


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("update-binfmts"), reason="needs root and binfmt-support")
def test_two_workers_set_up_foreign_programs_at_once_from_nothing(tmp_path):
    from .conftest import REPO

    namespace = ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private"]
    probe = subprocess.run([*namespace, "mount", "-t", "binfmt_misc", "x", "/proc/sys/fs/binfmt_misc"])
    if probe.returncode != 0:
        pytest.skip("this kernel has no binfmt_misc of a user namespace's own (Linux 6.7 and later)")
    result = subprocess.run(
        [*namespace, sys.executable, "-c", RACE], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["['ok', 'ok']", "enabled", "enabled"], result.stdout + result.stderr


PROBE = """
import subprocess
subprocess.run(["mount", "-t", "binfmt_misc", "own", "/proc/sys/fs/binfmt_misc"], check=True)
from tasks.system import binfmt
print(binfmt.runs_here("arm64"), binfmt.runs_here("amd64"))
"""


def test_the_probe_program_runs_natively_and_only_where_qemu_is_registered():
    from .conftest import REPO

    assert binfmt.runs_here("amd64") is True, "the x86-64 probe is a valid program"
    namespace = ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private"]
    probe = subprocess.run([*namespace, "mount", "-t", "binfmt_misc", "x", "/proc/sys/fs/binfmt_misc"])
    if probe.returncode != 0:
        pytest.skip("this kernel has no binfmt_misc of a user namespace's own (Linux 6.7 and later)")
    # A binfmt_misc of its own, with nothing registered: the arm64 probe cannot run there.
    result = subprocess.run([*namespace, sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True)
    assert result.stdout.split() == ["False", "True"], result.stdout + result.stderr
    if (binfmt.BINFMT / "qemu-aarch64").exists():
        assert binfmt.runs_here("arm64") is True, "and runs through the host's registration"
