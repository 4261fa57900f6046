"""The host's programs, and the image's own built for the host (twins), standing in for a
foreign image's (fai_config/lib/stand-ins.sh).

Run for real on a small tree: bind mounts in a private mount namespace, the
host's programs run in the tree through chroot, as the build runs the image's.
ROOTCMD answers for an arm64 image (dpkg's architecture, package versions) and
runs everything else in the tree.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import debmirror

REPO = Path(__file__).resolve().parent.parent
LIBRARY = REPO / "fai_config" / "lib" / "stand-ins.sh"
USERNS = [sys.executable, "-P", str(REPO / "tasks" / "system" / "userns.py")]
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="bind mounts and chroot need root"),
    pytest.mark.skipif(os.uname().machine != "x86_64", reason="the stand-ins are the host's amd64 programs"),
]


def tree(target: Path) -> list[str]:
    return sorted(str(p.relative_to(target)) for p in target.rglob("*"))


def run(
    target: Path, script: str, image_versions: str, arch: str = "arm64", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
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
            # In a user namespace, as the build's sandbox runs it: a container's root may do that too.
            *USERNS,
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
        env={**os.environ, "target": str(target), "ROOTCMD": str(rootcmd), **(env or {})},
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


def test_a_twin_stands_in_for_the_images_own_program_and_leaves_nothing(image, tmp_path):
    """The twin's programs (tasks/stages/twins.py) run in the image through the twin's own loader and
    libraries: over the image's program at its path, or at a path the image lacks; a package that
    installs into /bin (bookworm's) is found there."""
    published = tmp_path / "mirror"
    debmirror.publish(published / "debian", "trixie", debmirror.program_and_libraries())
    shutil.copy("/usr/bin/true", image / "usr/bin/tool")  # the image's own tool: prints nothing
    (image / "usr/bin/link").symlink_to("tool")  # a bind mount there would land on the tool
    (image / "usr/bin/dangling").symlink_to("nowhere")  # a mount point made there would be made at nowhere
    with debmirror.served(published) as url:
        debmirror.image_of(image, f"{url}/debian", "trixie", debmirror.program_and_libraries())
        before = tree(image)
        result = run(
            image,
            """
            stand_ins_begin
            stand_ins_twin tool
            stand_in_twin /usr/bin/tool
            stand_in_twin /usr/bin/oldtool
            stand_in_twin /usr/bin/absent
            stand_in_twin /usr/bin/tool /usr/bin/link
            stand_in_twin /usr/bin/tool /usr/bin/dangling
            grep -q /usr/bin/link "$STAND_IN_STATE/mounted" || echo "a link stays the image's"
            grep -q /usr/bin/dangling "$STAND_IN_STATE/mounted" || echo "a dangling one too"
            $ROOTCMD /usr/bin/tool "the twin's echo"
            $ROOTCMD /usr/bin/oldtool /a/b/basename
            test ! -e "$target/usr/bin/absent" && echo "what the twin lacks stays as it was"
            options=$(findmnt --noheadings --output OPTIONS --mountpoint "$target$STAND_IN_TWIN")
            [[ $options == ro,* ]] && echo read-only
            stand_ins_end
            """,
            image_versions="",
            env={
                "IMAGE_PYTHON": sys.executable,
                "IMAGE_TOOLS": str(REPO),
                "IMAGE_TWINS": str(tmp_path / "twins"),
                "IMAGE_BUILD_SOURCES": f"deb {url}/debian trixie main",
            },
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "a link stays the image's",
        "a dangling one too",
        "the twin's echo",
        "basename",
        "what the twin lacks stays as it was",
        "read-only",
    ]
    assert tree(image) == before
    assert (image / "usr/bin/tool").read_bytes() == Path("/usr/bin/true").read_bytes()


def test_without_a_twin_the_programs_stay_emulated(image):
    result = run(
        image,
        "stand_ins_begin\nstand_ins_twin tool && echo twin || echo emulated\nstand_ins_end\n",
        image_versions="",
        env={"IMAGE_TWINS": ""},
    )
    assert (result.returncode, result.stdout) == (0, "emulated\n")
