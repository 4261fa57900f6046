"""tasks/stages/base-upgrade.sh: what it asks apt to install into a base.

The script runs for real; chroot, mount and umount are stand-ins on PATH that
record each command and answer apt's simulations from a table (what each
package pulls in), so the choice of what every image shares is tested
without an archive. The real base is made by the end-to-end tests.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tasks.stages import base

# What apt would install for each package named (apt-get -s: "Inst" lines).
PULLS = {
    "linux-image-amd64": ["linux-image-6.1.0-1-amd64", "linux-base", "kmod", "initramfs-tools", "udev"],
    "linux-image-cloud-amd64": ["linux-image-6.1.0-1-cloud-amd64", "linux-base", "kmod", "initramfs-tools", "udev"],
    "cloud-init": ["cloud-init", "python3-yaml", "udev"],
    "chrony": ["chrony", "python3-yaml"],
}

MAIN = "deb http://deb.debian.org/debian bookworm main"

FAKE_CHROOT = """#!/bin/bash
root=$1; shift
echo "$*" >> "$CALLS"
if [ "$1 $2 $3 $4" = "apt-get -s --no-install-recommends install" ]; then
    shift 4
    for name in "$@"; do
        [ -f "$PULLS/$name" ] || { echo "E: Unable to locate package $name"; exit 100; }
        sed 's/.*/Inst & (1.0 Debian:12)/' "$PULLS/$name"
    done
fi
"""


def run_upgrade(tmp_path: Path, selections: list[list[str]], sources=(MAIN,)) -> list[str]:
    """base-upgrade.sh over a fake root: the commands it ran in the chroot."""
    root, bin_dir, pulls = tmp_path / "root", tmp_path / "bin", tmp_path / "pulls"
    for d in (root / "etc/apt", root / "usr/sbin", root / "tmp", root / "proc", root / "dev/pts", bin_dir, pulls):
        d.mkdir(parents=True, exist_ok=True)
    (root / "etc/apt/sources.list").write_text(f"{MAIN}\n")  # as debootstrap writes it
    for name, pulled in PULLS.items():
        (pulls / name).write_text("".join(f"{p}\n" for p in pulled))
    for tool, text in (("chroot", FAKE_CHROOT), ("mount", "#!/bin/sh\n"), ("umount", "#!/bin/sh\n")):
        (bin_dir / tool).write_text(text)
        (bin_dir / tool).chmod(0o755)
    calls = tmp_path / "calls"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "CALLS": str(calls),
        "PULLS": str(pulls),
        "BASE_PACKAGES": "sudo",
        "BASE_SELECTIONS": "\n".join(" ".join(s) for s in selections),
    }
    done = subprocess.run(
        ["bash", str(base.UPGRADE_SCRIPT), str(root), *sources],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    assert not list((root / "tmp").iterdir()), "the simulations' output is left behind"
    unresolved = "W: apt does not resolve one image's selection" in done.stderr
    assert unresolved == any("no-such-package" in selection for selection in selections), done.stderr
    return calls.read_text().splitlines()


INSTALL = "apt-get -y --no-install-recommends -o Dpkg::Options::=--force-confold install"


def shared_install(calls: list[str]) -> list[str]:
    """What the script installed beyond BASE_PACKAGES, and what it marked as automatic."""
    installs = [c.removeprefix(INSTALL).split() for c in calls if c.startswith(INSTALL)]
    assert installs[0] == ["sudo"]
    marked = [c.split()[2:] for c in calls if c.startswith("apt-mark auto")]
    assert marked == installs[1:], "what is shared is marked as installed automatically, all of it"
    return installs[1] if len(installs) > 1 else []


def test_what_every_image_installs_alike_goes_into_the_base_marked_automatic(tmp_path):
    calls = run_upgrade(
        tmp_path,
        [["linux-image-amd64"], ["cloud-init", "linux-image-cloud-amd64"], ["chrony", "linux-image-cloud-amd64"]],
    )
    assert sorted(shared_install(calls)) == ["initramfs-tools", "kmod", "linux-base", "udev"]
    # Each selection was simulated, after the packages every image gets were installed.
    simulated = [c for c in calls if c.startswith("apt-get -s")]
    assert len(simulated) == 3
    assert calls.index(f"{INSTALL} sudo") < calls.index(simulated[0])


@pytest.mark.parametrize(
    "selections",
    [
        [["linux-image-amd64"], ["linux-image-cloud-amd64", "no-such-package"]],  # apt cannot resolve one
        [["linux-image-amd64"], []],  # an image that installs nothing beyond the base
        [],  # no images named
    ],
)
def test_the_base_shares_nothing_more_unless_every_image_would_install_it(tmp_path, selections):
    assert shared_install(run_upgrade(tmp_path, selections)) == []


def test_one_image_shares_all_it_installs(tmp_path):
    # Its own packages too: its build names them, and its apt marks them manual then.
    assert sorted(shared_install(run_upgrade(tmp_path, [["chrony"]]))) == ["chrony", "python3-yaml"]


def test_the_base_keeps_the_sources_its_lists_and_caches_were_made_from(tmp_path):
    # A build writes the same sources (hooks/repository.DEBIAN) only when they
    # differ, so that apt finds its caches no older than sources.list.
    security = "deb http://deb.debian.org/debian-security bookworm-security main"
    run_upgrade(tmp_path, [], sources=(MAIN, security))
    assert (tmp_path / "root/etc/apt/sources.list").read_text() == f"{MAIN}\n{security}\n"
    assert not list((tmp_path / "root/etc/apt").glob("sources.list.*"))
