"""The tools that assemble a disk from files, of one fixed Debian release.

The disk's bytes depend on these programs: mke2fs lays out the root file
system (e2fsprogs 1.47.1 and later clamp every time to SOURCE_DATE_EPOCH,
which a bit-identical disk needs), mtools writes the ESP, sfdisk the
partition table. So they are never the build host's, whatever Debian it
runs, but those of TOOLS_RELEASE for the host's architecture, unpacked once
per work directory from the build mirror's signed archive, as mkosi's
ToolsTree does. They run through the tree's own dynamic loader and C
library: no chroot and no privilege. Their versions go into every build's
record (build-info.json, builder.tools).

    python -m tasks.system.toolstree DIR MIRROR   # make the tree (a build does so itself)
"""

from __future__ import annotations

import fcntl
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tasks.errors import StageFailed
from tasks.model.arch import Arch
from tasks.system import aptroot, atomic, proc

TOOLS_RELEASE = "trixie"
# The packages unpacked, libraries included: the tree is a bare unpack, not
# an installation, so nothing besides these files is there.
PACKAGES = (
    "libc6",
    "libgcc-s1",
    "e2fsprogs",
    "libext2fs2t64",
    "libcom-err2",
    "libss2",
    "libblkid1",
    "libuuid1",
    "fdisk",
    "libfdisk1",
    "libsmartcols1",
    "libmount1",
    "libselinux1",
    "libpcre2-8-0",
    "libreadline8t64",
    "libtinfo6",
    "readline-common",
    "mtools",
    "dosfstools",
)
# Each program the assembly runs, by the name it is called, and its file in the tree.
PROGRAMS = {
    "mke2fs": "usr/sbin/mke2fs",
    "tune2fs": "usr/sbin/tune2fs",
    "debugfs": "usr/sbin/debugfs",
    "e2fsck": "usr/sbin/e2fsck",
    "sfdisk": "usr/sbin/sfdisk",
    "mkfs.vfat": "usr/sbin/mkfs.fat",
    **{name: "usr/bin/mtools" for name in ("mcopy", "mmd", "mdir", "mtype", "mdel")},
}
# Written last: a tree without it is unfinished.
VERSIONS = "versions.tsv"


class ToolsFailed(StageFailed):
    pass


def tree_dir(workdir: Path) -> Path:
    return workdir / "tools" / f"{TOOLS_RELEASE}-{host_arch()}"


def host_arch() -> str:
    """The build host's architecture, as Debian names it (the tools run on the host)."""
    return Arch.of_host().spec.debian


def bin_dir(tree: Path) -> Path:
    return tree / "bin"


def versions(tree: Path) -> dict[str, str]:
    """Package -> version of a finished tree."""
    rows = (line.split("\t") for line in (tree / VERSIONS).read_text().splitlines() if line)
    return {row[0]: row[1] for row in rows}


def ensure(tree: Path, mirror: str) -> Path:
    """The tools tree (tree_dir), made first if it is not there; its path."""
    if (tree / VERSIONS).is_file():
        return tree
    tree.parent.mkdir(parents=True, exist_ok=True)
    with _locked(tree.parent / f".{tree.name}.lock"):
        if not (tree / VERSIONS).is_file():  # another build made it meanwhile
            _make(tree, mirror)
    return tree


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _make(tree: Path, mirror: str) -> None:
    atomic.remove(tree)
    arch = host_arch()
    with tempfile.TemporaryDirectory(prefix=f".{tree.name}.", dir=tree.parent) as scratch_name:
        scratch = Path(scratch_name)
        debs = _download(scratch, mirror, arch)
        unpacked = scratch / "tree"
        unpacked.mkdir()
        found = {}
        for deb in sorted(debs.glob("*.deb")):
            shown = _run(["dpkg-deb", "--show", "--showformat", "${Package}\t${Version}", str(deb)], f"read {deb.name}")
            package, version = shown.split("\t")
            found[package] = version
            _run(["dpkg-deb", "--extract", str(deb), str(unpacked)], f"unpack {deb.name}")
        missing = sorted(set(PACKAGES) - set(found))
        if missing:
            raise ToolsFailed(f"tools tree: {TOOLS_RELEASE} has no package {', '.join(missing)} for {arch}")
        _write_wrappers(unpacked)
        for name in PROGRAMS:
            _run([str(bin_dir(unpacked) / name), "-V" if name != "sfdisk" else "--version"], f"run {name}", ok=(0, 1))
        (unpacked / VERSIONS).write_text("".join(f"{p}\t{found[p]}\n" for p in sorted(found)))
        os.rename(unpacked, tree)


def _download(scratch: Path, mirror: str, arch: str) -> Path:
    """The packages, fetched and checked by apt against the archive's signed index."""
    apt, debs = aptroot.AptRoot(scratch / "apt", arch), scratch / "debs"
    debs.mkdir()
    apt.prepare([f"deb [signed-by={aptroot.KEYRING}] {mirror} {TOOLS_RELEASE} main"])
    _attempt(lambda: apt.run("update"), f"read {TOOLS_RELEASE}'s package index from {mirror}")
    _attempt(lambda: apt.run("download", *PACKAGES, cwd=debs), "download the tools")
    return debs


def _write_wrappers(unpacked: Path) -> None:
    """bin/<program>: the tree's program, run by the tree's loader with the tree's libraries
    (paths relative to the wrapper, so the tree can be renamed into place)."""
    loaders = sorted(unpacked.glob("usr/lib*/ld-linux*.so.*")) + sorted(unpacked.glob("usr/lib/*/ld-linux*.so.*"))
    if not loaders:
        raise ToolsFailed(f"tools tree: {TOOLS_RELEASE}'s libc6 has no dynamic loader")
    loader = loaders[0].relative_to(unpacked)
    libraries = ":".join(
        f"$tree/{d.relative_to(unpacked)}" for d in sorted(unpacked.glob("usr/lib/*-linux-gnu*")) if d.is_dir()
    )
    bin_dir(unpacked).mkdir()
    for name, program in PROGRAMS.items():
        wrapper = bin_dir(unpacked) / name
        wrapper.write_text(
            "#!/bin/sh\n"
            'tree=$(dirname "$(dirname "$(readlink -f "$0")")")\n'
            f'MKE2FS_CONFIG="$tree/etc/mke2fs.conf" exec "$tree/{loader}" --library-path "{libraries}"'
            f' --argv0 {name} "$tree/{program}" "$@"\n'
        )
        wrapper.chmod(0o755)


def _run(command: list[str], what: str, ok=(0,)) -> str:
    return _attempt(lambda: proc.run(command), what, ok)


def _attempt(step: Callable[[], str], what: str, ok=(0,)) -> str:
    try:
        return step()
    except proc.CommandFailed as failed:
        if failed.returncode in ok:
            return failed.output
        raise ToolsFailed(f"tools tree: cannot {what}: {failed.last_line}") from None


if __name__ == "__main__":
    print(ensure(tree_dir(Path(sys.argv[1])), sys.argv[2]))
