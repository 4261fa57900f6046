"""End to end: the real graph builds, tests and publishes the push tier.

Real fai-diskimage builds from the Debian mirror, real xz and qemu-img, real
qemu boots under TCG (or KVM where it works). Several minutes: marked slow,
run by CI.
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tasks import boottest
from tasks.matrix import BootTestSettings

from . import imagefs

REPO = Path(__file__).resolve().parent.parent
CELLS = ["bookworm-nocloud-amd64", "bookworm-genericcloud-amd64"]
VERSION = "e2e-1"
pytestmark = [pytest.mark.slow, pytest.mark.skipif(os.geteuid() != 0, reason="image builds need root")]


def doit(base: Path, *args) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "doit", "-f", str(REPO / "dodo.py"), *args,
         f"workdir={base / 'build'}", f"storage={base / 'storage'}", "xz_level=1", f"version={VERSION}"],
        capture_output=True, text=True, timeout=3600,
    )
    print(result.stdout, result.stderr, sep="\n")
    return result


def executed(result) -> set[str]:
    return {line[3:].strip() for line in result.stdout.splitlines() if line.startswith(".  ")}


def up_to_date(result) -> set[str]:
    return {line[3:].strip() for line in result.stdout.splitlines() if line.startswith("-- ")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("e2e", numbered=True)
    one_target = doit(base, "boottest:bookworm-nocloud-amd64")
    default = doit(base)
    again = doit(base)
    return base, one_target, default, again


def test_one_target_builds_exactly_what_it_needs(runs):
    _, one_target, _, _ = runs
    assert one_target.returncode == 0, one_target.stderr
    assert executed(one_target) == {"build:bookworm-nocloud-amd64", "boottest:bookworm-nocloud-amd64"}


def test_default_run_publishes_the_push_tier(runs):
    base, _, default, _ = runs
    assert default.returncode == 0, default.stderr
    stages = ("build", "compress", "boottest", "manifest", "publish")
    expected = {f"{s}:{c}" for s in stages for c in CELLS} - {"build:bookworm-nocloud-amd64",
                                                              "boottest:bookworm-nocloud-amd64"}
    assert executed(default) == expected
    assert {"build:bookworm-nocloud-amd64", "boottest:bookworm-nocloud-amd64"} <= up_to_date(default)


def test_second_run_executes_no_task(runs):
    _, _, _, again = runs
    assert again.returncode == 0, again.stderr
    assert executed(again) == set()
    assert len(up_to_date(again)) == 5 * len(CELLS)


@pytest.mark.parametrize("cell", CELLS)
def test_image_boots_to_login(runs, cell):
    base = runs[0]
    result = json.loads((base / "build" / cell / "boottest.json").read_text())
    assert result["verdict"] == "passed" and result["passed"] is True
    assert 0 < result["milestones"]["kernel"] <= result["milestones"]["systemd"] <= result["milestones"]["login"]
    assert result["accelerator"] in ("kvm", "tcg")
    assert "login:" in (base / "build" / cell / "boot.log").read_text(errors="replace")


@pytest.mark.parametrize("cell", CELLS)
def test_manifest_checksums_are_the_files_real_ones(runs, cell):
    base = runs[0]
    manifest = json.loads((base / "build" / cell / "manifest.json").read_text())
    assert manifest["version"] == VERSION
    assert {a["format"] for a in manifest["artifacts"]} == {"tar.xz", "qcow2"}
    for artifact in manifest["artifacts"]:
        path = base / "build" / cell / artifact["file"]
        assert artifact["size"] == path.stat().st_size
        assert artifact["sha512"] == hashlib.sha512(path.read_bytes()).hexdigest()
    assert len(manifest["packages"]) > 100
    assert manifest["boot_test"]["passed"] is True


def test_package_lists_follow_the_vendor(runs):
    base = runs[0]
    packages = {cell: {p["name"] for p in json.loads((base / "build" / cell / "manifest.json").read_text())["packages"]}
                for cell in CELLS}
    assert "cloud-init" not in packages["bookworm-nocloud-amd64"]
    assert "linux-image-amd64" in packages["bookworm-nocloud-amd64"]
    assert {"cloud-init", "linux-image-cloud-amd64"} <= packages["bookworm-genericcloud-amd64"]
    assert "grub-pc" in packages["bookworm-genericcloud-amd64"]


def test_published_files_and_sha512sums(runs):
    base = runs[0]
    directory = base / "storage" / "bookworm" / VERSION
    expected = {"SHA512SUMS"}
    for cell in CELLS:
        vendor = cell.split("-")[1]
        expected |= {f"debian-12-{vendor}-amd64-{VERSION}.{ext}" for ext in ("tar.xz", "qcow2", "json")}
    assert {p.name for p in directory.iterdir() if not p.name.startswith(".")} == expected
    check = subprocess.run(["sha512sum", "--check", "--strict", "SHA512SUMS"], cwd=directory,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.count(": OK") == len(expected) - 1


def test_image_tree_is_clean_and_bootable_anywhere(runs):
    """Look inside the built disk, independently of the checks FAI ran."""
    image = runs[0] / "build" / "bookworm-nocloud-amd64" / "disk.raw"
    parts = imagefs.partitions(image)
    root = imagefs.root_partition_index(image)
    assert parts[root]["offset"] == max(p["offset"] for p in parts), "root comes last, so it can grow"
    with imagefs.mounted(image, root) as tree:
        grub = (tree / "boot/grub/grub.cfg").read_text()
        assert "root=UUID=" in grub and "root=/dev/" not in grub and "console=ttyS0" in grub
        assert (tree / "etc/machine-id").read_text() == ""
        assert not list((tree / "etc/ssh").glob("ssh_host_*"))
        assert [p.name for p in (tree / "var/lib/apt/lists").iterdir() if p.name not in ("partial", "lock")] == []
        assert not (tree / "etc/resolv.conf").exists() or (tree / "etc/resolv.conf").is_symlink()
        assert (tree / "etc/shadow").read_text().startswith("root::")
        assert "UUID=" in (tree / "etc/fstab").read_text()
        assert "deb http://deb.debian.org/debian bookworm main" in (tree / "etc/apt/sources.list").read_text()


BREAKAGES = [
    # (what the kernel command line gets, the verdict the boot test must give)
    (lambda line: line.replace("root=UUID=", "rootdelay=5 root=UUID=0000").strip(), "root-device-not-found"),
    (lambda line: line.rstrip() + " init=/bin/false", "kernel-panic"),
    (lambda line: line.rstrip() + " systemd.unit=emergency.target", "emergency-mode"),
]


@pytest.mark.parametrize("breakage, verdict", BREAKAGES, ids=[v for _, v in BREAKAGES])
def test_broken_image_fails_with_the_right_verdict(runs, tmp_path, breakage, verdict):
    original = runs[0] / "build" / "bookworm-nocloud-amd64" / "disk.raw"
    broken = tmp_path / "disk.raw"
    subprocess.run(["cp", "--sparse=always", str(original), str(broken)], check=True)
    with imagefs.mounted(broken, imagefs.root_partition_index(broken)) as tree:
        cfg = tree / "boot/grub/grub.cfg"
        lines = cfg.read_text().splitlines()
        cfg.write_text("\n".join(breakage(l) if l.strip().startswith("linux") else l for l in lines) + "\n")
    settings = BootTestSettings(timeout=300, memory=1024, cpus=2, accelerator="auto", until="login")
    result = boottest.boot("amd64", broken, tmp_path / "boot.log", settings)
    assert result.verdict == verdict, boottest.explain(result, tmp_path / "boot.log")
    assert result.seconds < settings.timeout, "a known failure is reported when seen, not at the timeout"
    assert "login" not in result.milestones
