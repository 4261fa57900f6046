"""An arm64 image, built on this amd64 host and boot-tested, for real, without privileges.

The run is a CI job's on a runner with `privileged = false` (tools/unprivileged: a
container without --privileged or devices), watched from the host: no loop device
appears and nothing of the image is mounted. The base is debootstrapped and the image
built through qemu-user-static (the host's binfmt_misc entry, with its F flag: the
container can neither see nor mount binfmt_misc); the boot test runs
qemu-system-aarch64 with AAVMF (UEFI) under TCG. Long: marked arm64, and run in the
background from the session's start (tests/background.py).
"""

import json
import os

import pytest

from . import imagelists
from .background import BackgroundRun

CELL = "trixie-nocloud-arm64"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.arm64,
    pytest.mark.skipif(os.geteuid() != 0, reason="image builds need root"),
]


# Started with the test session, this test running last (tests/background.py).
BACKGROUND_RUN = BackgroundRun("arm64-e2e", [f"boottest:{CELL}"], unprivileged=True)


def test_arm64_image_builds_and_boots_through_uefi():
    returncode, output = BACKGROUND_RUN.wait(timeout=3 * 3600)
    print(output)
    assert returncode == 0, output[-3000:]
    cell_dir = BACKGROUND_RUN.workdir / CELL
    watch = BACKGROUND_RUN.watch
    assert watch and watch.samples > 1 and watch.seen == set(), "nothing attached or mounted on the host"
    assert json.loads((cell_dir / "build-info.json").read_text())["builder"]["privileged"] == "no"

    packages = {
        line.split("\t")[0]: line.split("\t")[2] for line in (cell_dir / "packages.tsv").read_text().splitlines()
    }
    assert packages["linux-image-arm64"] == "arm64"
    assert packages["bash"] == "arm64"
    assert {"shim-signed", "grub-efi-arm64-signed"} <= set(packages)

    # The build says where its time went: each FAI task, hook and script, adding up to the build.
    info = json.loads((cell_dir / "build-info.json").read_text())
    assert {"task instsoft", "script DEBIAN/20-initramfs"} <= set(info["phases"])
    assert 0.9 * info["build_seconds"] <= sum(info["phases"].values()) <= info["build_seconds"] + 1

    boot = json.loads((cell_dir / "boottest.json").read_text())
    assert boot["passed"] is True
    assert [(b["firmware"], b["accelerator"]) for b in boot["boots"]] == [("uefi", "tcg")]
    assert "login" in boot["boots"][0]["milestones"]
    console = (cell_dir / "boot-uefi.log").read_text(errors="replace")
    # GRUB's own banner (bookworm's 2.06 greets, trixie's 2.12 shows its menu): the boot test's milestone.
    assert "grub" in boot["boots"][0]["milestones"], "AAVMF went through shim and the signed GRUB"

    # The image's own versions of the slow programs ran natively, built for the host (twins), while
    # the packages were installed and while the initramfs was made; the log names them.
    log = (cell_dir / "build.log").read_text(errors="replace")
    assert "twins: no twin" not in log, [line for line in log.splitlines() if "twins:" in line]
    twins = [line for line in log.splitlines() if line.startswith("twins: ")]
    assert any(" dpkg " in t and " kmod " in t for t in twins) and any(" dash " in t for t in twins), twins

    # Built with native programs standing in for some of the image's, the image holds what one
    # built entirely under emulation holds: the same packages, the same files.
    for kind, (missing, extra) in imagelists.differences(cell_dir, imagelists.RECORDED / CELL).items():
        assert not missing and not extra, f"{kind}: missing {missing[:20]}, extra {extra[:20]}"
    # The kernel that booted is Debian's arm64 kernel, by its own banner.
    kernels = [line for line in console.splitlines() if "Linux version" in line]
    assert kernels and "-arm64 " in kernels[0], kernels or console[-2000:]
