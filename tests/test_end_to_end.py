"""End to end: the real graph builds, tests and publishes the push tier.

Real debootstrap and fai-diskimage builds from the Debian mirror, real xz and
qemu-img, real qemu boots through BIOS and UEFI under TCG (or KVM where it
works), two doit jobs in parallel. The graph runs from a copy of the
repository so that a test can edit the config space. Several minutes:
marked slow, run by CI.
"""

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from tasks.model.layout import CellFiles
from tasks.model.matrix import BootTestSettings
from tasks.model.version import Version
from tasks.release import instancetest
from tasks.stages import boottest
from tasks.system.checksum import sha512_file

from . import imagefs, servers
from .pushtier import CANARIES, CELLS, FAILING, KEY, REPO, STAGES, VERSION, WATCHES, doit, executed, up_to_date
from .test_sbom import check_sboms
from .test_storage import SUFFIXES

# What each cell publishes besides SHA512SUMS (tasks/stages/publish.py).
PUBLISHED = SUFFIXES
pytestmark = [pytest.mark.slow, pytest.mark.skipif(os.geteuid() != 0, reason="image builds need root")]


def _group(pattern: str, text: str) -> str:
    """The first group of pattern's first match (a line per match: re.M); fails when nothing matches."""
    found = re.search(pattern, text, re.M)
    assert found, f"{pattern!r} not in the text"
    return found.group(1)


@pytest.fixture(scope="module")
def runs(push_tier_runs):
    """The push tier's runs (tests/pushtier.py), shared with the builder image's tests."""
    return push_tier_runs


def test_one_target_builds_exactly_what_it_needs(runs):
    _, one_target, *_ = runs
    assert one_target.returncode == 0, one_target.stderr
    assert executed(one_target) == {
        "base:bookworm-amd64",
        "build:bookworm-nocloud-amd64",
        "boottest:bookworm-nocloud-amd64",
    }


def test_default_run_publishes_the_push_tier_on_one_shared_base(runs):
    base, _, default, _, _ = runs
    assert default.returncode == 0, default.stderr
    done_before = {"base:bookworm-amd64", "build:bookworm-nocloud-amd64", "boottest:bookworm-nocloud-amd64"} | {
        f"{s}:bookworm-genericcloud-amd64" for s in STAGES
    }  # by the two runs before
    assert executed(default) == {f"{s}:{c}" for s in STAGES for c in CELLS} - done_before
    assert done_before <= up_to_date(default)
    summary = json.loads((base / "build" / "run-summary.json").read_text())
    assert set(summary["cells"]) == set(CELLS) and summary["failed"] == []
    for cell in CELLS:
        log = (base / "build" / cell / "build.log").read_text()
        assert f"Unpacking the base system {base / 'build' / 'base' / 'bookworm-amd64.tar.zst'}" in log
        assert "Calling debootstrap" not in log


def test_builds_from_a_current_base_leave_apt_update_out(runs):
    """Built minutes after their base: its package lists are the mirror's, so FAI's updatebase
    ran without apt (its mounts and diversions still made: these images boot and pass their
    checks below). Should the archive move on in between, the log names the suite and
    updatebase runs in full; at least one cell must have seen the base current."""
    current = []
    for cell in CELLS:
        log = (runs[0] / "build" / cell / "build.log").read_text()
        skipped = "aptlists: the base's package lists are the mirror's" in log
        left_out = "Left out: apt-get -y -o Dpkg::Options::=--force-confnew dist-upgrade" in log
        assert skipped == left_out == ("Skipping task_updatebase" in log), cell
        assert skipped or re.search(r"aptlists: \S+: the mirror's InRelease is not the base's", log), cell
        current.append(skipped)
    assert any(current)


def test_no_credential_of_the_run_reaches_the_builds(runs):
    """The runs hold a signing key and CANARIES; the base and the builds get an allowlist of the
    environment, and the image check that would name any credential-like variable passed."""
    for cell in CELLS:
        log = (runs[0] / "build" / cell / "build.log").read_text()
        assert "image check passed: no credential reaches the image's build" in log, cell
        assert not any(value in log for value in CANARIES.values()), cell
    base_log = (runs[0] / "build" / "base" / "bookworm-amd64.log").read_text()
    assert not any(value in base_log for value in CANARIES.values())


def test_second_run_executes_no_task(runs):
    _, _, _, again, _ = runs
    assert again.returncode == 0, again.stderr
    assert executed(again) == set()
    assert len(up_to_date(again)) == 1 + len(STAGES) * len(CELLS)  # the base, and every stage of every cell


def status_of(base: Path) -> dict[str, str]:
    """`doit list --status` of the built cells' stages and their base: R (would run) or U (up to date)."""
    listed = doit(base, "list", "--all", "--status")
    assert listed.returncode == 0, listed.stderr
    ours = {f"{stage}:{cell}" for stage in STAGES for cell in CELLS} | {"base:bookworm-amd64"}
    found = {line[2:].split()[0]: line[0] for line in listed.stdout.splitlines() if line[:2] in ("R ", "U ")}
    assert ours <= set(found), listed.stdout
    return {name: found[name] for name in ours}


def test_a_damaged_record_makes_its_stage_stale_and_a_lost_database_nothing(runs):
    """On the built work directory: a truncated build-info.json makes its build stale, and nothing
    else before the stages that read it; doit's database deleted, the next run executes no task."""
    base = runs[0]
    cell = CELLS[0]
    info = base / "build" / cell / "build-info.json"
    saved = info.read_bytes()
    info.write_bytes(saved[: len(saved) // 2])
    try:
        status = status_of(base)
        assert status[f"build:{cell}"] == "R" and status[f"build:{CELLS[1]}"] == "U"
        assert status["base:bookworm-amd64"] == "U" and status[f"compress:{cell}"] == "U"
    finally:
        info.write_bytes(saved)
    assert set(status_of(base).values()) == {"U"}, "the same bytes again: up to date"
    (base / "build" / ".doit.db").unlink()
    again = doit(base)
    assert again.returncode == 0, again.stderr
    assert executed(again) == set(), "every target is there, made from the same inputs"


def test_a_failed_cell_stops_nothing_else_and_the_summary_says_so(runs):
    """tier=mixed: genericcloud is built, booted and published although the other cell's build failed."""
    base, _, _, _, mixed = runs
    assert mixed.returncode != 0, "an unexpected failure fails the run"
    cloud = "bookworm-genericcloud-amd64"
    assert {f"{s}:{cloud}" for s in STAGES} <= executed(mixed)
    assert json.loads((base / "build" / cloud / "published.json").read_text())
    assert f"build:{FAILING} failed: FAI failed" in mixed.stdout
    # (run-summary.json holds the last run's summary; this run's is its output.)
    table = mixed.stdout[mixed.stdout.index("run summary:") :].splitlines()
    failing_row = next(line for line in table if line.startswith(FAILING))
    log = base / "build" / FAILING / "build.log"
    assert f"failed: {log}" in failing_row and failing_row.count("skipped") == len(STAGES) - 1  # all after build
    assert "the layout needs at least 256 MiB" in log.read_text(), "the log the summary names tells why"
    cloud_row = next(line for line in table if line.startswith(cloud))
    assert cloud_row.count("done") == len(STAGES) and "failed" not in cloud_row and "skipped" not in cloud_row
    assert table[-1].startswith("2 cells (1 failed, 1 ok); stages: ")


def test_packages_fetched_once_serve_the_next_build(runs):
    """The base fetched what every image gets; nocloud (first run) what its classes add;
    genericcloud (second run) took from the cache what it shares with nocloud."""
    build = runs[0] / "build"
    cached = {p.name.split("_")[0] for p in (build / "cache" / "packages").glob("*.deb")}
    assert {"grub-cloud-amd64", "shim-signed", "openssh-server", "linux-image-amd64", "cloud-init"} <= cached

    def summary(log):
        found = re.search(r"package cache: (\d+) packages from the cache .*, (\d+) fetched and kept", log.read_text())
        assert found, f"no package cache summary in {log}"
        return int(found.group(1)), int(found.group(2))

    _, base_fetched = summary(build / "base" / "bookworm-amd64.log")
    _, nocloud_fetched = summary(build / "bookworm-nocloud-amd64" / "build.log")
    _, cloud_fetched = summary(build / "bookworm-genericcloud-amd64" / "build.log")
    assert base_fetched > 200, "the base fetched the packages every image gets (boot loaders, tools...)"
    assert 0 < nocloud_fetched < 20, "an image fetched only what its classes add (its kernel, initramfs-tools)"
    assert 0 < cloud_fetched < base_fetched / 2, "cloud-init, the SSH server, the cloud kernel"


def test_what_every_image_installs_alike_comes_with_the_base(runs):
    """The kernel's dependencies are installed once, into the base, and still
    marked in each image as installed automatically, as its own apt marks them."""
    build = runs[0] / "build"
    shared = re.search(
        r"I: Installing what every image installs alike: (.*)", (build / "base" / "bookworm-amd64.log").read_text()
    )
    assert shared, "the base installed what every image installs alike"
    assert {"udev", "kmod", "initramfs-tools", "linux-base"} <= set(shared.group(1).split())
    assert not {"cloud-init", "openssh-server"} & set(shared.group(1).split()), "nocloud has neither"
    for cell in CELLS:
        new = re.search(
            r"The following NEW packages will be installed:\n((?:  .*\n)+)", (build / cell / "build.log").read_text()
        )
        assert new and "linux-image-" in new.group(1) and "udev" not in new.group(1).split()
    image = build / "bookworm-nocloud-amd64" / "disk.raw"
    with imagefs.tree(image) as tree:
        states = (tree / "var/lib/apt/extended_states").read_text().split("\n\n")
    auto = {_group(r"^Package: (\S+)", stanza) for stanza in states if "Auto-Installed: 1" in stanza}
    assert {"udev", "kmod", "initramfs-tools", "linux-base"} <= auto
    assert not {"linux-image-amd64", "sudo", "grub-cloud-amd64"} & auto, "what the config space names is manual"


def test_a_base_made_again_from_the_same_archive_is_the_same_bytes(runs):
    """The base made once more, as when it ages past base_max_age_days, from the same cached
    packages: the same tarball, byte for byte, so nothing built on it runs again."""
    base = runs[0]
    files = base / "build" / "base"
    before = hashlib.sha256((files / "bookworm-amd64.tar.zst").read_bytes()).hexdigest()
    archive = json.loads((files / "bookworm-amd64.shares.json").read_text())["source_date_epoch"]
    forgotten = doit(base, "forget", "base:bookworm-amd64")
    assert forgotten.returncode == 0, forgotten.stderr
    again = doit(base)
    assert again.returncode == 0, again.stderr
    if json.loads((files / "bookworm-amd64.shares.json").read_text())["source_date_epoch"] != archive:
        pytest.skip("the archive moved on between the two bases: their packages may differ")
    assert hashlib.sha256((files / "bookworm-amd64.tar.zst").read_bytes()).hexdigest() == before
    assert executed(again) == {"base:bookworm-amd64"}
    fetched = re.search(
        r"package cache: \d+ packages from the cache .*, (\d+) fetched and kept",
        (files / "bookworm-amd64.log").read_text(),
    )
    assert fetched and fetched.group(1) == "0", "made from the packages the first base cached"


def test_builds_run_without_privileges_and_attach_or_mount_nothing(runs):
    """Every run above (bases, builds, boot tests, publication) ran in a container without
    privileges; while each ran, no loop device appeared on the host and no image was mounted."""
    base = runs[0]
    for cell in CELLS:
        info = json.loads((base / "build" / cell / "build-info.json").read_text())
        assert info["builder"]["privileged"] == "no", "built where it could not mount on its own"
        assert info["tools"]["e2fsprogs"] >= "1.47.1", "by the pinned tools"
    assert len(WATCHES) >= 4 and all(watch.samples > 1 for watch in WATCHES)
    assert [watch.seen for watch in WATCHES if watch.seen] == []


@pytest.mark.parametrize("cell", CELLS)
def test_image_boots_through_bios_and_uefi(runs, cell):
    base = runs[0]
    result = json.loads((base / "build" / cell / "boottest.json").read_text())
    assert result["verdict"] == "passed" and result["passed"] is True
    assert [b["firmware"] for b in result["boots"]] == ["bios", "uefi"]
    for boot in result["boots"]:
        assert boot["verdict"] == "passed"
        m = boot["milestones"]
        assert 0 < m["kernel"] <= m["systemd"] <= m["login"]
        assert "login:" in (base / "build" / cell / f"boot-{boot['firmware']}.log").read_text(errors="replace")
    assert "Welcome to GRUB" in (base / "build" / cell / "boot-uefi.log").read_text(errors="replace"), (
        "UEFI went through shim and the signed GRUB"
    )


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
    packages = {
        cell: {p["name"] for p in json.loads((base / "build" / cell / "manifest.json").read_text())["packages"]}
        for cell in CELLS
    }
    assert "cloud-init" not in packages["bookworm-nocloud-amd64"]
    assert "linux-image-amd64" in packages["bookworm-nocloud-amd64"]
    assert {"cloud-init", "linux-image-cloud-amd64"} <= packages["bookworm-genericcloud-amd64"]
    for cell in CELLS:
        assert {"grub-cloud-amd64", "grub-pc-bin", "shim-signed", "grub-efi-amd64-signed"} <= packages[cell]


def test_published_files_and_sha512sums(runs):
    base = runs[0]
    directory = base / "storage" / "bookworm" / "daily" / VERSION
    assert (base / "storage" / "bookworm" / "daily" / "latest").read_text() == f"{VERSION}\n"
    unlisted = {"SHA512SUMS", "SHA512SUMS.asc", "SHA256SUMS", "FINGERPRINTS", "index.html"}
    expected = set(unlisted)
    for cell in CELLS:
        vendor = cell.split("-")[1]
        expected |= {f"debian-12-{vendor}-amd64-{VERSION}.{ext}" for ext in PUBLISHED}
    assert {p.name for p in directory.iterdir() if not p.name.startswith(".")} == expected
    check = subprocess.run(
        ["sha512sum", "--check", "--strict", "SHA512SUMS"], cwd=directory, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.count(": OK") == len(expected) - len(unlisted)
    # The SHA-256 of what the catalogue lists (tasks/stages/catalogue.py): tar.xz, qcow2, Incus metadata.
    sha256 = subprocess.run(
        ["sha256sum", "--check", "--strict", "SHA256SUMS"], cwd=directory, capture_output=True, text=True
    )
    assert sha256.returncode == 0 and sha256.stdout.count(": OK") == 3 * len(CELLS), sha256.stdout + sha256.stderr
    # Each Incus/LXD VM image's fingerprint: its metadata tarball, then its qcow2.
    fingerprints = (directory / "FINGERPRINTS").read_text().splitlines()
    assert len(fingerprints) == len(CELLS)
    for line in fingerprints:
        fingerprint, tarball = line.split("  ")
        both = subprocess.run(
            f"cat {tarball} {tarball.removesuffix('.incus.tar.xz')}.qcow2 | sha256sum",
            shell=True,
            cwd=directory,
            capture_output=True,
            text=True,
            check=True,
        )
        assert both.stdout.split()[0] == fingerprint
    # The first version of each cell: nothing to compare with.
    for cell in CELLS:
        vendor = cell.split("-")[1]
        assert "first version" in (directory / f"debian-12-{vendor}-amd64-{VERSION}.changes.txt").read_text()


@pytest.mark.parametrize("cell", CELLS)
def test_published_sboms_validate_and_list_the_image_packages(runs, cell, repo_matrix):
    base = runs[0]
    files = CellFiles.of(base / "build", repo_matrix.cell(cell))
    assert check_sboms(files) > 100
    image = json.loads(files.manifest.read_text())["name"]
    directory = base / "storage" / "bookworm" / "daily" / VERSION
    for kind in ("spdx", "cdx"):
        assert (directory / f"{image}.{kind}.json").read_bytes() == files.sbom(kind).read_bytes()


def test_published_signature_and_provenance_verify_with_the_public_key(runs):
    base = runs[0]
    result = doit(base, "verify", "image=bookworm-nocloud-amd64", f"key={KEY[0].public}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SHA512SUMS: signature good" in result.stdout
    assert "intoto.json: signature good, 2 subjects match SHA512SUMS" in result.stdout
    # The subjects' digests are the published files' own, computed here.
    directory = base / "storage" / "bookworm" / "daily" / VERSION
    image = f"debian-12-nocloud-amd64-{VERSION}"
    envelope = json.loads((directory / f"{image}.intoto.json").read_text())
    statement = json.loads(base64.b64decode(envelope["payload"]))
    for subject in statement["subject"]:
        digest = hashlib.sha512((directory / subject["name"]).read_bytes()).hexdigest()
        assert subject["digest"]["sha512"] == digest
    assert {s["name"] for s in statement["subject"]} == {f"{image}.tar.xz", f"{image}.qcow2"}


def test_image_tree_is_clean_and_bootable_anywhere(runs):
    """Look inside the built disk, independently of the checks FAI ran."""
    image = runs[0] / "build" / "bookworm-nocloud-amd64" / "disk.raw"
    parts = imagefs.partitions(image)
    types = {p["type"].lower() for p in parts}
    assert "c12a7328-f81f-11d2-ba4b-00a0c93ec93b" in types, "an EFI system partition"
    assert "21686148-6449-6e6f-744e-656564454649" in types, "a BIOS boot partition"
    root = imagefs.root_partition_index(image)
    assert parts[root]["offset"] == max(p["offset"] for p in parts), "root comes last, so it can grow"
    assert parts[root]["node"].endswith(".raw1"), "but it is partition 1, as in Debian's images"
    with imagefs.tree(image) as tree:
        grub = (tree / "boot/grub/grub.cfg").read_text()
        assert "root=PARTUUID=" in grub and "root=/dev/" not in grub and "console=ttyS0" in grub
        assert (tree / "etc/machine-id").read_text() == ""
        assert not list((tree / "etc/ssh").glob("ssh_host_*"))
        assert [p.name for p in (tree / "var/lib/apt/lists").iterdir() if p.name not in ("partial", "lock")] == []
        assert not (tree / "etc/resolv.conf").exists() or (tree / "etc/resolv.conf").is_symlink()
        assert (tree / "etc/shadow").read_text().startswith("root::")
        fstab = (tree / "etc/fstab").read_text()
        assert "PARTUUID=" in fstab and " /boot/efi vfat " in fstab and "loop" not in fstab
        assert (
            "Suites: bookworm bookworm-updates bookworm-backports"
            in (tree / "etc/apt/sources.list.d/debian.sources").read_text()
        )
        assert (tree / "etc/hosts").read_text().split() == (
            REPO / "fai_config/files/etc/hosts/DEBIAN"
        ).read_text().split()
        assert not (tree / "var/cache/image-build-apt").exists()


def test_release_tests_an_instance_then_publishes_and_notifies(runs):
    """The manual release of genericcloud, through doit: the image boots as an instance with a
    NoCloud seed and passes its checks over SSH; then the version directory, `latest` and a mail."""
    base, *_ = runs
    cell = "bookworm-genericcloud-amd64"
    refused = doit(base, f"release:{cell}")
    assert refused.returncode != 0 and f"doit release:{cell} confirm=yes" in refused.stdout + refused.stderr

    mailbox = servers.Mailbox().start()
    matrix = base / "repo" / "matrix.yaml"
    original = matrix.read_text()
    try:
        matrix.write_text(
            original.replace(
                "  notify: {}",
                f"  notify: {{to: [cloud-team@example.org], from: images@example.org, smtp_host: 127.0.0.1, "
                f"smtp_port: {mailbox.port}}}",
            )
        )
        result = doit(base, f"release:{cell}", "confirm=yes")
    finally:
        matrix.write_text(original)
        mailbox.stop()
    assert result.returncode == 0, result.stderr
    assert executed(result) == {f"release:{cell}"}, "the release took the images as they were"

    instance = json.loads((base / "build" / cell / "instance-test.json").read_text())
    assert instance["passed"] is True, instance
    checks = {c["name"]: c for c in instance["checks"]}
    assert set(checks) == {
        "cloud-init finished without errors",
        "host name from meta-data",
        "root file system grew to the disk",
        "apt points at the image's release",
        "systemd is running",
    }
    assert all(c["passed"] for c in checks.values()), checks
    assert "release-test-bookworm" in checks["host name from meta-data"]["detail"]

    released = base / "storage" / "bookworm" / VERSION
    check = subprocess.run(
        ["sha512sum", "--check", "--strict", "SHA512SUMS"], cwd=released, capture_output=True, text=True
    )
    assert check.returncode == 0 and check.stdout.count(": OK") == len(PUBLISHED), check.stdout + check.stderr
    assert (released / "SHA512SUMS.asc").is_file(), "a release is signed"
    assert (base / "storage" / "bookworm" / "latest").read_text() == f"{VERSION}\n"
    record = json.loads((base / "build" / cell / "release.json").read_text())
    assert record["published"]["directory"] == f"bookworm/{VERSION}"
    [(_, recipients, mail)] = mailbox.messages
    assert recipients == ["cloud-team@example.org"]
    assert f"debian-12-genericcloud-amd64-{VERSION}.qcow2" in mail.get_content()


def test_class_file_edit_rebuilds_exactly_that_cell(runs):
    """A file only the NOCLOUD class reads: nocloud is made again, genericcloud is not."""
    base, *_ = runs
    network = base / "repo" / "fai_config" / "files/etc/netplan/90-default.yaml/NOCLOUD"
    network.write_text(network.read_text() + "\n# edited by a test\n")
    result = doit(base)
    assert result.returncode == 0, result.stderr
    assert executed(result) == {f"{s}:bookworm-nocloud-amd64" for s in STAGES}
    assert {f"{s}:bookworm-genericcloud-amd64" for s in STAGES} | {"base:bookworm-amd64"} <= up_to_date(result)
    # Neither the packages nor the initramfs read that file: both steps come from the
    # cell's first build (tasks/stages/stepcache.py); test_reproduce_... compares the
    # image with one that made them again.
    log = (base / "build" / "bookworm-nocloud-amd64" / "build.log").read_text()
    assert "stepcache: packages: restored" in log and "stepcache: initramfs: restored" in log
    assert "Calling task_instsoft" not in log


def test_matrix_edit_for_one_vendor_marks_only_that_vendor(runs):
    base, *_ = runs
    matrix = base / "repo" / "matrix.yaml"
    original = matrix.read_text()
    matrix.write_text(
        original.replace(
            "  genericcloud:\n    fai_classes: [CLOUD, GENERIC, LINUX_CLOUD, TIME_SYSTEMD]\n    disk_size: 3G",
            "  genericcloud:\n    fai_classes: [CLOUD, GENERIC, LINUX_CLOUD, TIME_SYSTEMD]\n    disk_size: 4G",
        )
    )
    try:
        status = subprocess.run(
            [
                sys.executable,
                "-m",
                "doit",
                "-f",
                str(base / "repo" / "dodo.py"),
                "list",
                "--all",
                "--status",
                f"workdir={base / 'build'}",
                f"storage={base / 'storage'}",
                "xz_level=1",
                f"version={VERSION}",
            ],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, **KEY[0].environment()},  # as the runs before: the signing key is config
        ).stdout
    finally:
        matrix.write_text(original)
    # The stages only: release:<cell> is named on purpose, and without confirm=yes it always refuses.
    will_run = {
        line.split()[1]
        for line in status.splitlines()
        if line.startswith("R ") and line.split()[1].split(":")[0] in STAGES and line.split()[1].split(":")[-1] in CELLS
    }
    # doit decides the build is stale; what follows it runs once the new disk.raw exists.
    assert will_run == {"build:bookworm-genericcloud-amd64"}


BREAKAGES = [
    # (what the kernel command line gets, the verdict the boot test must give)
    (lambda line: line.replace("root=PARTUUID=", "rootdelay=5 root=PARTUUID=0000").strip(), "root-device-not-found"),
    (lambda line: line.rstrip() + " init=/bin/false", "kernel-panic"),
    (lambda line: line.rstrip() + " systemd.unit=emergency.target", "emergency-mode"),
]


@pytest.mark.parametrize("breakage, verdict", BREAKAGES, ids=[v for _, v in BREAKAGES])
def test_broken_image_fails_with_the_right_verdict(runs, tmp_path, breakage, verdict):
    original = runs[0] / "build" / "bookworm-nocloud-amd64" / "disk.raw"
    broken = tmp_path / "disk.raw"
    subprocess.run(["cp", "--sparse=always", str(original), str(broken)], check=True)
    tools = imagefs.tools_of(original)
    with imagefs.tree(broken, tools) as tree:
        lines = (tree / "boot/grub/grub.cfg").read_text().splitlines()
    broken_cfg = "\n".join(breakage(line) if line.strip().startswith("linux") else line for line in lines) + "\n"
    imagefs.replace_file(broken, tools, "/boot/grub/grub.cfg", broken_cfg)
    settings = BootTestSettings(timeout=300, memory=1024, cpus=2, accelerator="auto", until="login")
    result = boottest.boot("amd64", broken, tmp_path / "boot.log", settings, "bios")
    assert result.verdict == verdict, boottest.explain(result, tmp_path / "boot.log")
    assert result.seconds < settings.timeout, "a known failure is reported when seen, not at the timeout"
    assert "login" not in result.milestones


# ---------------------------------------------------------------------------
# Debian's images, cell for cell: one build of every vendor (bookworm amd64),
# and a trixie one, from the shared bases, checked against what Debian's
# official images hold for each (debian-cloud-images' config space; the values
# are written here from it, not read from our own config space).

VENDOR_CELLS = [
    "bookworm-generic-amd64",
    "bookworm-ec2-amd64",
    "bookworm-azure-amd64",
    "bookworm-gce-amd64",
    "trixie-genericcloud-amd64",
]
STRAY = "bookworm-stray-amd64"
# Top-level packages every official image has (reference section 3.3).
EVERY_IMAGE = set(
    """apparmor apt-listchanges apt-utils bash-completion bind9-host ca-certificates curl ethtool init
iptables iputils-ping less libnss-myhostname libpam-systemd man-db manpages nano netbase netplan.io pciutils polkitd
psmisc reportbug screen socat sudo systemd-resolved tcpdump traceroute unattended-upgrades uuid-runtime vim vim-tiny
whiptail xz-utils zstd grub-cloud-amd64""".split()
)
OFFICIAL = {
    # cell: (kernel, vendor packages, absent packages, default user, GiB, GRUB timeout, kernel parameters, time)
    "bookworm-generic-amd64": (
        "linux-image-amd64",
        {
            "cloud-init",
            "cloud-guest-utils",
            "openssh-server",
            "ssh-import-id",
            "cloud-initramfs-growroot",
            "systemd-timesyncd",
        },
        {"libnss-resolve", "ifupdown"},
        "debian",
        3,
        0,
        [],
        None,
    ),
    "bookworm-ec2-amd64": (
        "linux-image-cloud-amd64",
        {"cloud-init", "awscli", "amazon-ec2-utils", "openssh-server", "systemd-timesyncd"},
        {"libnss-resolve", "ifupdown"},
        "admin",
        8,
        0,
        [],
        "FallbackNTP=169.254.169.123 fd00:ec2::123",
    ),
    "bookworm-azure-amd64": (
        "linux-image-cloud-amd64",
        {"cloud-init", "waagent", "hyperv-daemons", "chrony", "openssh-server"},
        {"libnss-resolve", "systemd-timesyncd", "ifupdown"},
        "debian",
        30,
        1,
        ["nvme_core.io_timeout=240", "nvme_core.admin_timeout=240"],
        "refclock PHC /dev/ptp_hyperv poll 3 dpoll -2 offset 0",
    ),
    "bookworm-gce-amd64": (
        "linux-image-cloud-amd64",
        {"google-guest-agent", "google-compute-engine-oslogin", "openssh-server", "systemd-timesyncd"},
        {"cloud-init", "libnss-resolve", "ifupdown"},
        None,
        10,
        0,
        ["intel_iommu=off"],
        "FallbackNTP=metadata.google.internal",
    ),
    "trixie-genericcloud-amd64": (
        "linux-image-cloud-amd64",
        {"cloud-init", "libnss-resolve", "linux-sysctl-defaults", "dosfstools", "openssh-server"},
        {"ifupdown"},
        "debian",
        3,
        0,
        [],
        None,
    ),
}


@pytest.fixture(scope="module")
def vendor_builds(runs):
    base = runs[0]
    result = doit(base, *(f"build:{cell}" for cell in VENDOR_CELLS + [STRAY]))
    return base, result


def test_a_stray_user_fails_the_build_with_the_check_name(vendor_builds):
    base, result = vendor_builds
    assert result.returncode != 0
    message = result.stdout[result.stdout.index(f"build:{STRAY} failed") :]
    assert (
        "image check FAILED with: only Debian's system users, none of them with a login shell: "
        "user tester is not one Debian's images have" in message
    )
    assert "user tester has uid 1000" in message and "user tester has the shell /bin/bash" in message
    assert not (base / "build" / STRAY / "disk.raw").exists(), "a failed build leaves no image"


@pytest.mark.parametrize("cell", VENDOR_CELLS)
def test_image_has_the_official_content(vendor_builds, cell):
    base, result = vendor_builds
    assert f"build:{cell} failed" not in result.stdout, result.stdout[-3000:]
    kernel, vendor, never, user, gib, timeout, parameters, time_source = OFFICIAL[cell]
    release = cell.split("-")[0]
    image = base / "build" / cell / "disk.raw"
    assert image.stat().st_size == gib << 30

    parts = {int(p["node"].rsplit("raw", 1)[1]): p for p in imagefs.partitions(image)}
    assert set(parts) == {1, 14, 15}
    assert (parts[14]["start"], parts[14]["size"], parts[14]["type"]) == (
        2048,
        6144,
        "21686148-6449-6E6F-744E-656564454649",
    )
    assert (parts[15]["start"], parts[15]["size"], parts[15]["type"]) == (
        8192,
        253952,
        "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
    )
    assert (parts[1]["start"], parts[1]["type"]) == (262144, "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709")

    with imagefs.tree(image) as tree:
        status = (tree / "var/lib/dpkg/status").read_text().split("\n\n")
        installed = {
            block.split("\n", 1)[0].removeprefix("Package: ")
            for block in status
            if "Status: install ok installed" in block
        }
        assert EVERY_IMAGE | {kernel} | vendor <= installed, sorted(EVERY_IMAGE | {kernel} | vendor - installed)
        assert not never & installed, never & installed
        # Python's byte code checked by timestamp, as in Debian's images (not the
        # checked-hash .pyc files py_compile writes under SOURCE_DATE_EPOCH).
        pycs = list((tree / "usr/lib/python3/dist-packages").rglob("*.pyc"))
        if "cloud-init" in installed:
            assert len(pycs) > 100, "cloud-init's Python, compiled"
        assert {int.from_bytes(p.read_bytes()[4:8], "little") for p in pycs} <= {0}
        # Password ages count from the build's day, the same in every rebuild of it.
        ages = {line.split(":")[2] for line in (tree / "etc/shadow").read_text().splitlines()}
        assert len(ages - {"", "0"}) == 1, ages

        passwd = [line.split(":") for line in (tree / "etc/passwd").read_text().splitlines()]
        assert [row[0] for row in passwd if 1000 <= int(row[2]) < 65534] == [], "the default user is made at boot"
        cloud_cfg = tree / "etc/cloud/cloud.cfg.d/01_debian_cloud.cfg"
        if user:
            assert yaml.safe_load(cloud_cfg.read_text())["system_info"]["default_user"]["name"] == user

        fstab = [line.split() for line in (tree / "etc/fstab").read_text().splitlines() if line.strip()]
        assert fstab[0][1:] == ["/", "ext4", "rw,discard,errors=remount-ro,x-systemd.growfs", "0", "1"]
        esp = ["vfat", "defaults", "0", "0"] if release == "bookworm" else ["vfat", "defaults,umask=077", "0", "2"]
        assert fstab[1][1:] == ["/boot/efi", *esp]
        assert all(line[0].startswith("PARTUUID=") for line in fstab)

        grub = (tree / "boot/grub/grub.cfg").read_text()
        linux = next(line.split() for line in grub.splitlines() if line.strip().startswith("linux"))
        assert linux[3:] == [
            "ro",
            "console=tty0",
            "console=ttyS0,115200",
            "earlyprintk=ttyS0,115200",
            "consoleblank=0",
            *parameters,
        ]
        assert _group(r"set timeout_style=\w+\s+set timeout=(\d+)", grub) == str(timeout)
        assert (tree / "etc/grub.d/enable_cloud").exists(), "grub-cloud keeps the ESP up to date"

        assert os.readlink(tree / "etc/resolv.conf") == "/run/systemd/resolve/resolv.conf"
        for unit in ("systemd-networkd.service", "systemd-resolved.service"):
            assert list((tree / "etc/systemd/system").glob(f"*.wants/{unit}")) or any(
                (d / unit).is_symlink() for d in (tree / "etc/systemd/system").glob("*.wants")
            ), unit
        netplan = tree / "etc/netplan/90-default.yaml"
        assert netplan.exists() == ("gce" in cell)
        if netplan.exists():
            assert netplan.stat().st_mode & 0o777 == 0o600

        if time_source:
            config = (
                (tree / "etc/chrony/chrony.conf")
                if "azure" in cell
                else (tree / "etc/systemd/timesyncd.conf.d/01_debian_cloud.conf")
            )
            assert time_source in config.read_text()

        sources = (tree / "etc/apt/sources.list.d/debian.sources").read_text()
        assert (
            f"Types: deb deb-src\nURIs: mirror+file:///etc/apt/mirrors/debian.list\n"
            f"Suites: {release} {release}-updates {release}-backports\nComponents: main\n" in sources
        )
        assert f"Suites: {release}-security\n" in sources
        assert (tree / "etc/apt/mirrors/debian.list").read_text() == "https://deb.debian.org/debian\n"
        assert all(line.startswith("#") for line in (tree / "etc/apt/sources.list").read_text().splitlines())

        sshd = (tree / "etc/ssh/sshd_config").read_text().splitlines()
        assert "PasswordAuthentication no" in sshd and "ClientAliveInterval 120" in sshd
        blacklist = (tree / "etc/modprobe.d/blacklist.conf").read_text().splitlines()
        assert "blacklist pcspkr" in blacklist and "blacklist floppy" in blacklist
        vendor_name = cell.split("-")[1]
        assert (tree / "etc/cloud-release").read_text() == f'ID={vendor_name}\nVERSION="{VERSION}"\n'
        assert (tree / "etc/hostname").read_text() == "" and (tree / "etc/machine-id").read_text() == ""
        assert (tree / "etc/kernel-img.conf").read_text().count("do_symlinks = no") == 1
        assert not (tree / "vmlinuz").is_symlink() and not (tree / "initrd.img").is_symlink()
        if "ec2" in cell:
            hook = tree / "etc/initramfs-tools/scripts/init-top/no-v6-dad.sh"
            assert hook.stat().st_mode & 0o777 == 0o755
        if "azure" in cell:
            assert "telemetry" in (tree / "etc/cloud/cloud.cfg.d/10_azure.cfg").read_text()

    facts = json.loads((base / "build" / cell / "facts.json").read_text())
    assert facts["users"]["default_user"] == user and facts["disk"]["size"] == gib << 30
    assert facts["network"]["netplan"] and not facts["network"]["ifupdown"]


def test_compare_two_cells_facts_through_doit(vendor_builds):
    base, _ = vendor_builds
    result = doit(base, "compare", "left=bookworm-generic-amd64", "right=bookworm-ec2-amd64")
    assert result.returncode == 0, result.stderr
    assert 'users.default_user: "debian" != "admin"' in result.stdout
    packages = next(line for line in result.stdout.splitlines() if line.strip().startswith("packages: "))
    only_right = packages.split("only right: ")[1].split(", ")
    assert {"amazon-ec2-utils", "awscli", "linux-image-cloud-amd64"} <= set(only_right)
    missing = doit(base, "compare", "left=bookworm-generic-amd64", "right=sid-ec2-arm64")
    assert missing.returncode != 0
    assert "sid-ec2-arm64/facts.json: no image facts report" in missing.stdout + missing.stderr


def test_ec2_instance_test_logs_in_as_admin(vendor_builds, repo_matrix):
    """The release's instance test, on the EC2 image as built: cloud-init finds the NoCloud
    seed, creates the image's own default user (admin), and the checks pass over SSH as admin."""
    base, _ = vendor_builds
    cell = repo_matrix.cell("bookworm-ec2-amd64")
    files = CellFiles.of(base / "build", cell)
    settings = BootTestSettings(timeout=300, memory=1024, cpus=2, accelerator="auto", until="login")
    result = instancetest.instance_test(cell, files, settings, timeout=600)
    assert result.user == "admin" and result.passed, instancetest.describe(result)
    recorded = json.loads((files.dir / "instance-test.json").read_text())
    assert recorded["user"] == "admin" and recorded["passed"] is True


def test_reproduce_builds_the_cell_again_bit_for_bit(runs):
    """doit reproduce: a second build of nocloud from the same base, packages and version,
    compared bit by bit and file by file with the first. The first restored its packages and
    initramfs from the step cache (test_class_file_edit_...); the second makes every step."""
    base = runs[0]
    cell = "bookworm-nocloud-amd64"
    first_log = (base / "build" / cell / "build.log").read_text()
    assert "stepcache: packages: restored" in first_log and "stepcache: initramfs: restored" in first_log
    result = doit(base, f"reproduce:{cell}")
    assert result.returncode == 0, result.stdout + result.stderr
    second_log = (base / "build" / cell / "rebuild" / "build.log").read_text()
    assert "stepcache: packages: off" in second_log and "Calling task_instsoft" in second_log
    report = json.loads((base / "build" / cell / "reproducibility.json").read_text())
    assert report["entries"] > 20000
    assert report["trees"] == "identical", report["tree_differences"][:20]
    assert report["disk"] == "identical", report["disk_differences"]
    first_disk = base / "build" / cell / "disk.raw"
    assert report["disk_sha512"] == sha512_file(first_disk)
    assert f"disk SHA-512 {report['disk_sha512']}" in result.stdout
    assert not (base / "build" / cell / "rebuild" / "disk.raw").exists(), "the second disk is not kept"
    # The manifest carries the report's verdict from then on.
    assert doit(base, f"manifest:{cell}").returncode == 0
    manifest = json.loads((base / "build" / cell / "manifest.json").read_text())
    assert manifest["reproducibility"]["trees"] == "identical"
    assert manifest["reproducibility"]["report"] == "reproducibility.json"
    assert manifest["disk"] == {"file": "disk.raw", "size": first_disk.stat().st_size, "sha512": report["disk_sha512"]}


def test_a_new_version_restores_the_steps_as_a_fresh_build_makes_them(runs):
    """Built again as a daily would be, with a new dated version (after the base's time, as a
    run's start is): the packages and the initramfs kept by the first builds are restored, and
    the image equals one built with that version making every step (doit reproduce)."""
    base = runs[0]
    cell = "bookworm-nocloud-amd64"
    kept_time = json.loads((base / "build" / cell / "build-info.json").read_text())["source_date_epoch"]
    tarball = base / "build" / "base" / "bookworm-amd64.tar.zst"
    dated = str(Version.of_run(datetime.fromtimestamp(tarball.stat().st_mtime + 60, UTC)))
    assert doit(base, "forget", f"build:{cell}").returncode == 0
    result = doit(base, f"build:{cell}", version=dated)
    assert result.returncode == 0, result.stdout + result.stderr
    first = json.loads((base / "build" / cell / "build-info.json").read_text())
    assert first["version"] == dated and first["source_date_epoch"] != kept_time
    log = (base / "build" / cell / "build.log").read_text()
    assert "stepcache: packages: restored" in log and "stepcache: initramfs: restored" in log
    result = doit(base, f"reproduce:{cell}", version=dated)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"reproduce:{cell}" in executed(result)
    report = json.loads((base / "build" / cell / "reproducibility.json").read_text())
    assert report["version"] == dated
    assert report["trees"] == "identical", report["tree_differences"][:20]
