"""How a base is made: what it shares among its images, and the same bytes from the same inputs.

What the images share is resolved by the host's real apt against a small
archive of real packages served on loopback (tests/debmirror.py); the share
phase of base-upgrade.sh runs for real with chroot and mount as stand-ins on
PATH that record each command. The real base is made by the end-to-end
tests, twice (tests/test_end_to_end.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from tasks.model.records import BaseShares
from tasks.stages import aptlists, base, baseshare
from tasks.system import aptroot, proc
from tests import debmirror

SUITE = "bookworm"


def deb(name: str, depends: str = "") -> debmirror.Deb:
    return debmirror.Deb(name, "1.0-1", fields={"Depends": depends} if depends else {})


# Two kernels that need the same tools, two time daemons, cloud-init.
ARCHIVE = [
    deb("linux-image-amd64", "linux-base, kmod, initramfs-tools"),
    deb("linux-image-cloud-amd64", "linux-base, kmod, initramfs-tools, cloud-kernel-firmware"),
    deb("initramfs-tools", "udev | busybox, cpio"),
    *(deb(name) for name in ("linux-base", "kmod", "udev", "busybox", "cpio", "cloud-kernel-firmware", "sudo")),
    deb("cloud-init", "python3-yaml, udev"),
    deb("chrony", "python3-yaml"),
    deb("systemd-timesyncd"),
    deb("python3-yaml"),
]


@pytest.fixture(scope="module")
def apt(tmp_path_factory):
    """The host's apt on the lists of a served archive: what it would install on an empty amd64 system."""
    root = tmp_path_factory.mktemp("archive")
    debmirror.publish(root / "debian", SUITE, ARCHIVE)
    with debmirror.served(root) as url:
        apt = aptroot.AptRoot(root / "apt", "amd64")
        apt.prepare([f"deb [trusted=yes] {url}/debian {SUITE} main"])
        apt.run("update")
    return apt


def test_what_every_image_installs_alike_is_shared(apt):
    selections = [["linux-image-amd64", "systemd-timesyncd"], ["linux-image-cloud-amd64", "cloud-init", "chrony"]]
    assert baseshare.resolve(apt.installs, ["sudo"], selections) == (
        "cpio",
        "initramfs-tools",
        "kmod",
        "linux-base",
        "udev",
    )


def test_a_package_one_image_adds_changes_nothing_shared_unless_all_have_it(apt):
    before = [["linux-image-amd64"], ["linux-image-cloud-amd64", "chrony"]]
    shared = baseshare.resolve(apt.installs, ["sudo"], before)
    assert baseshare.resolve(apt.installs, ["sudo"], [["linux-image-amd64"], [*before[1], "cloud-init"]]) == shared
    # python3-yaml now comes with every image: shared.
    after = [["linux-image-amd64", "cloud-init"], ["linux-image-cloud-amd64", "chrony"]]
    assert set(baseshare.resolve(apt.installs, ["sudo"], after)) == {*shared, "python3-yaml"}


def test_what_every_image_gets_anyway_is_not_shared_again(apt):
    assert baseshare.resolve(apt.installs, ["sudo", "initramfs-tools"], [["linux-image-amd64"], ["kmod"]]) == ("kmod",)
    assert baseshare.resolve(apt.installs, ["sudo"], []) == ()


def test_one_image_shares_all_it_installs(apt):
    # Its own packages too: its build names them, and its apt marks them manual then.
    assert baseshare.resolve(apt.installs, ["sudo"], [["chrony"]]) == ("chrony", "python3-yaml")


def test_a_package_the_archive_does_not_have_fails_the_resolution(apt):
    with pytest.raises(proc.CommandFailed, match="no-such-package"):
        baseshare.resolve(apt.installs, ["sudo"], [["linux-image-amd64"], ["no-such-package"]])


def test_apts_answers_are_kept_for_one_tarball_only(apt, tmp_path):
    asked = []

    def ask(packages):
        asked.append(list(packages))
        return apt.installs(packages)

    memo = baseshare.Memo(ask)
    baseshare.resolve(memo, ["sudo"], [["chrony"], ["cloud-init"]])
    memo.save(tmp_path / "memo.json", "a" * 64)
    again = baseshare.Memo.load(tmp_path / "memo.json", "a" * 64, ask)
    baseshare.resolve(again, ["sudo"], [["chrony"], ["cloud-init"]])
    assert len(asked) == 3  # sudo, sudo chrony, sudo cloud-init: each once
    other = baseshare.Memo.load(tmp_path / "memo.json", "b" * 64, ask)
    baseshare.resolve(other, ["sudo"], [["chrony"]])
    assert len(asked) == 5, "another tarball: asked again"


def shares_check(tmp_path: Path, apt: aptroot.AptRoot, selections, held_selections=None) -> baseshare.SharesCurrent:
    """A base whose tarball holds the archive's lists, with the record of what it shares."""
    tree = tmp_path / "tree"
    (tree / baseshare.LISTS.parent).mkdir(parents=True, exist_ok=True)
    if not (tree / baseshare.LISTS).exists():
        (tree / baseshare.LISTS).symlink_to(apt.dir / "lists", target_is_directory=True)
    tarball = tmp_path / "base.tar.zst"
    subprocess.run(
        ["tar", "--create", "--zstd", "--dereference", "-C", str(tree), "-f", str(tarball), f"./{baseshare.LISTS}"],
        check=True,
    )
    include = ("sudo",)
    held = held_selections or selections
    shared = baseshare.resolve(apt.installs, include, held)
    record = BaseShares(list(include), [list(s) for s in held], list(shared), 0)
    (tmp_path / "shares.json").write_text(json.dumps(record.to_json()))
    sources = tuple((apt.dir / "etc/sources.list").read_text().splitlines())
    return baseshare.SharesCurrent(
        tmp_path / "shares.json",
        tarball,
        tmp_path / "memo.json",
        "amd64",
        sources,
        include,
        tuple(tuple(s) for s in selections),
    )


def test_the_up_to_date_check_compares_what_is_shared_not_the_lists(apt, tmp_path):
    held = [["linux-image-amd64"], ["linux-image-cloud-amd64", "chrony"]]
    assert shares_check(tmp_path, apt, held)(None, {})
    # One image gains a package the other lacks: still what the base holds.
    assert shares_check(tmp_path, apt, [held[0], [*held[1], "cloud-init"]], held)(None, {})
    assert (tmp_path / "memo.json").exists(), "apt's answers are kept for the next run"
    # Every image gains python3-yaml: the base would hold more.
    changed = [[*held[0], "cloud-init"], held[1]]
    assert not shares_check(tmp_path, apt, changed, held)(None, {})
    # A package the base's lists do not know: made again (its run says why).
    assert not shares_check(tmp_path, apt, [held[0], ["no-such-package"]], held)(None, {})
    (tmp_path / "shares.json").write_text("{")
    check = baseshare.SharesCurrent(
        tmp_path / "shares.json", tmp_path / "base.tar.zst", tmp_path / "memo.json", "amd64", (), ("sudo",), ()
    )
    assert not check(None, {}), "a damaged record: made again"


# --------------------------------------------------------------------------
# base-upgrade.sh's phases

INSTALL = "apt-get -y --no-install-recommends -o Dpkg::Options::=--force-confold install"
FAKE_CHROOT = """#!/bin/bash
root=$1; shift
echo "$*" >> "$CALLS"
if [ "$1" = dpkg-query ]; then
    # Installed: what INSTALLED names.
    case " $INSTALLED " in *" ${@: -1} "*) echo installed ;; *) exit 1 ;; esac
fi
"""


def run_phase(tmp_path: Path, phase: str, *args: str, **env: str) -> list[str]:
    """A phase of base-upgrade.sh over a fake root: the commands it ran in the chroot."""
    root, bin_dir = tmp_path / "root", tmp_path / "bin"
    for d in (root / "etc/apt", root / "usr/sbin", root / "proc", root / "dev", bin_dir):
        d.mkdir(parents=True, exist_ok=True)
    (root / "etc/apt/sources.list").write_text(f"deb http://deb.debian.org/debian {SUITE} main\n")
    for tool, text in (("chroot", FAKE_CHROOT), ("mount", "#!/bin/sh\n")):
        (bin_dir / tool).write_text(text)
        (bin_dir / tool).chmod(0o755)
    calls = tmp_path / "calls"
    calls.unlink(missing_ok=True)
    environment = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLS": str(calls), **env}
    command = ["bash", str(base.UPGRADE_SCRIPT), phase, str(root), *args]
    subprocess.run(command, env=environment, check=True, capture_output=True, text=True)
    return calls.read_text().splitlines() if calls.exists() else []


def test_the_share_phase_marks_automatic_only_what_it_installs(tmp_path):
    calls = run_phase(tmp_path, "share", BASE_SHARED="cpio kmod udev", INSTALLED="cpio")
    assert f"{INSTALL} cpio kmod udev" in calls
    assert calls[-1] == "apt-mark auto kmod udev", "cpio was there before: its mark stays"
    assert not (tmp_path / "root/usr/sbin/policy-rc.d").exists()
    assert not any(c.startswith("apt-get") for c in run_phase(tmp_path, "share", BASE_SHARED="", INSTALLED=""))


def test_the_base_keeps_the_sources_its_lists_were_made_from(tmp_path):
    # A build writes the same sources (hooks/repository.DEBIAN) only when they differ.
    main = f"deb http://deb.debian.org/debian {SUITE} main"
    security = f"deb http://deb.debian.org/debian-security {SUITE}-security main"
    calls = run_phase(tmp_path, "upgrade", main, security, BASE_PACKAGES="sudo")
    assert (tmp_path / "root/etc/apt/sources.list").read_text() == f"{main}\n{security}\n"
    assert calls[-1] == f"{INSTALL} sudo"
    assert (tmp_path / "root/usr/sbin/policy-rc.d").exists(), "no daemon starts until the share phase ends"


def test_an_unknown_phase_is_refused_in_one_line(tmp_path):
    with pytest.raises(subprocess.CalledProcessError) as failed:
        run_phase(tmp_path, "everything")
    assert failed.value.stderr.strip() == "base-upgrade.sh: no phase everything (upgrade or share)"


# --------------------------------------------------------------------------
# The same bytes


def test_the_archive_time_is_the_newest_date_of_its_suites(tmp_path):
    (tmp_path / "host_debian_dists_bookworm_InRelease").write_text(
        "Origin: Debian\nDate: Sat, 06 Dec 2026 08:00:00 UTC\n"
    )
    (tmp_path / "host_debian_dists_bookworm-updates_InRelease").write_text("Date: Sun, 07 Dec 2026 02:00:00 UTC\n")
    assert aptlists.archive_time(tmp_path) == 1796608800
    with pytest.raises(ValueError, match="no InRelease file with a Date"):
        aptlists.archive_time(tmp_path / "none")


def make_tree(root: Path, now: int) -> None:
    """A tree as a base leaves it, written at time now."""
    files = {
        "etc/machine-id": "0123456789abcdef\n",
        "etc/hostname": "buildhost\n",
        "etc/.resolv.conf.systemd-resolved.bak": "nameserver 10.0.0.1\n",
        "etc/shadow": "root:*:20794:0:99999:7:::\nuser:!:0:0:99999:7:::\nlocked::::::::\n",
        "var/lib/dbus/machine-id": "0123456789abcdef\n",
        "var/log/dpkg.log": f"{now} install sudo\n",
        "var/log/apt/history.log": f"Start-Date: {now}\n",
        "var/cache/ldconfig/aux-cache": f"{now}",
        "var/cache/apt/pkgcache.bin": f"{now}",
        "var/cache/apt/archives/sudo_1_amd64.deb": "deb",
        "usr/bin/tool": "#!/bin/sh\n",
        "run/mount/utab": "",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (root / "etc/resolv.conf").symlink_to("../run/systemd/resolve/stub-resolv.conf")
    os.utime(root / "usr/bin/tool", (1000, 1000))  # as the package has it
    for path in [root, *root.rglob("*")]:
        if path.lstat().st_mtime > 1000:
            os.utime(path, (now, now), follow_symlinks=False)


def test_a_settled_tree_makes_the_same_tarball_whenever_it_was_made(tmp_path):
    epoch = 1796608800
    tarballs = []
    for n, now in enumerate((epoch + 3600, epoch + 8 * 86400)):  # that day, and a week later
        root = tmp_path / f"root{n}"
        make_tree(root, now)
        base.settle(root, epoch)
        tarball = tmp_path / f"base{n}.tar.zst"
        proc.run(base.tar_command(root, tarball, epoch))
        tarballs.append(hashlib.sha256(tarball.read_bytes()).hexdigest())
    assert tarballs[0] == tarballs[1]
    root = tmp_path / "root1"
    assert (root / "etc/machine-id").read_text() == "" and (root / "etc/hostname").read_text() == ""
    assert not (root / "var/lib/dbus/machine-id").exists() and not (root / "var/cache/ldconfig/aux-cache").exists()
    assert not (root / "etc/.resolv.conf.systemd-resolved.bak").exists(), "the build host's resolver"
    assert not (root / "run/mount").exists()
    assert (
        not list((root / "var/cache/apt/archives").glob("*.deb")) and not (root / "var/cache/apt/pkgcache.bin").exists()
    )
    assert (root / "var/log/dpkg.log").read_text() == "" and (root / "var/log/apt/history.log").read_text() == ""
    day = epoch // 86400
    assert (root / "etc/shadow").read_text() == f"root:*:{day}:0:99999:7:::\nuser:!:0:0:99999:7:::\nlocked::::::::\n"
    assert (root / "usr/bin/tool").stat().st_mtime == 1000, "older times stay"
    assert (root / "etc/resolv.conf").is_symlink() and os.lstat(root / "etc/resolv.conf").st_mtime == epoch
