"""The host's programs standing in for a foreign image's (fai_config/lib/stand-ins.sh).

Run for real on a small tree: bind mounts in a private mount namespace, the
host's programs run in the tree through chroot, as the build runs the image's.
ROOTCMD answers for an arm64 image (dpkg's architecture, package versions) and
runs everything else in the tree.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LIBRARY = REPO / "fai_config" / "lib" / "stand-ins.sh"
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="bind mounts and chroot need root"),
    pytest.mark.skipif(os.uname().machine != "x86_64", reason="the stand-ins are the host's amd64 programs"),
]


def tree(target: Path) -> list[str]:
    return sorted(str(p.relative_to(target)) for p in target.rglob("*"))


def run(target: Path, script: str, image_versions: str, arch: str = "arm64") -> subprocess.CompletedProcess:
    rootcmd = target.parent / "rootcmd"
    rootcmd.write_text(
        "#!/bin/bash\n"
        f'if [ "$*" = "dpkg --print-architecture" ]; then echo {arch}; exit; fi\n'
        f'if [ "$1" = dpkg-query ]; then case "${{@: -1}}" in {image_versions} esac; exit 1; fi\n'
        f'exec chroot {target} "$@"\n'
    )
    rootcmd.chmod(0o755)
    state = target.parent / "state"
    return subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "bash",
            "-euo",
            "pipefail",
            "-c",
            f"STAND_IN_STATE={state}; . {LIBRARY}; STAND_IN_STATE={state}\n{script}",
        ],
        env={**os.environ, "target": str(target), "ROOTCMD": str(rootcmd)},
        capture_output=True,
        text=True,
    )


@pytest.fixture
def image(tmp_path) -> Path:
    target = tmp_path / "image"
    for d in ("usr/bin", "usr/lib", "usr/libexec", "tmp"):
        (target / d).mkdir(parents=True)
    shutil.copy("/usr/bin/true", target / "usr/bin/cp")  # the image's own cp (a stand-in's target)
    return target


def host_version(package: str) -> str:
    return subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package], capture_output=True, text=True).stdout


def test_host_programs_run_in_the_image_read_only_and_leave_nothing(image):
    before = tree(image)
    zstd = host_version("zstd")
    result = run(
        image,
        """
        stand_ins_begin
        stand_in /usr/bin/ls /usr/bin/cp
        test ! -e "$STAND_IN_STATE/copies/cp" && echo "the image's cp is left alone"
        stand_in /usr/bin/cp
        stand_in /usr/bin/readlink /usr/bin/modinfo
        stand_in_same_version zstd /usr/bin/zstd
        stand_in_same_version dash /usr/bin/dash
        $ROOTCMD /usr/bin/cp --version | head -1
        $ROOTCMD /usr/bin/modinfo --version | head -1
        $ROOTCMD /usr/bin/zstd --version
        test ! -e "$target/usr/bin/dash" && echo "dash stays the image's"
        for inside in /usr/libexec/native-libs /usr/bin/cp; do  # asked, not tried: a write would reach the host
            findmnt --noheadings --output OPTIONS --mountpoint "$target$inside" | grep -q '^ro,' && echo "read-only"
        done
        stand_ins_end
        """,
        image_versions=f'zstd) echo "{zstd}";; dash) echo "0.0-not-the-hosts";;',
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "the image's cp is left alone"
    assert lines[1].startswith("cp (GNU coreutils)") and lines[2].startswith("readlink (GNU coreutils)")
    assert "Zstandard" in lines[3] and lines[4:] == ["dash stays the image's", "read-only", "read-only"]
    assert tree(image) == before  # every mount point made for a stand-in is gone
    assert (image / "usr/bin/cp").read_bytes() == Path("/usr/bin/true").read_bytes()


def test_versions_of_one_series_let_a_program_stand_in(image):
    dpkg = host_version("dpkg")
    series, _ = dpkg.rsplit(".", 1)
    checks = """
        stand_ins_begin
        stand_in_same_series dpkg /usr/bin/dpkg-deb
        test -e "$target/usr/bin/dpkg-deb" && echo "stands in" || echo "emulated"
        stand_ins_end
    """
    same = run(image, checks, image_versions=f'dpkg) echo "{series}.999";;')
    other = run(image, checks, image_versions='dpkg) echo "999.1.0";;')
    assert same.returncode == 0 and other.returncode == 0, same.stderr + other.stderr
    assert (same.stdout.strip(), other.stdout.strip()) == ("stands in", "emulated")


def test_no_stand_ins_for_a_native_image(image):
    checks = "stand_ins_begin && echo began || echo emulated\nstand_ins_end\n"
    assert run(image, checks, image_versions="", arch="arm64").stdout.strip() == "began"
    assert run(image, checks, image_versions="", arch="amd64").stdout.strip() == "emulated"


def test_no_initramfs_hook_finds_a_host_library(image):
    """trixie's udev hook copies every /usr/lib/*/libkmod.so.* into the initramfs, whatever its
    architecture: with the host's libraries there, the host's libkmod went into an arm64 initramfs."""
    result = run(
        image,
        """
        stand_ins_begin
        stand_in /usr/bin/kmod /usr/bin/modinfo
        $ROOTCMD /usr/bin/modinfo --version | head -1
        ls "$target"/usr/lib/*/libkmod.so.* "$target"/lib*/libkmod.so.* 2>/dev/null || echo "no host library found"
        stand_ins_end
        """,
        image_versions="",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("kmod version"), lines  # the host's kmod found its libkmod, elsewhere
    assert lines[1:] == ["no host library found"]
