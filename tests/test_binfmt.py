"""Foreign programs (tasks/system/binfmt.py): what a foreign build tells qemu-user."""

import os
import shutil
import subprocess

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
