"""Test helper: an image's package, file and initramfs lists, in a form that outlives a kernel ABI bump.

The arm64 build takes shortcuts past emulation (fai_config/scripts/DEBIAN/20-initramfs);
its image must not change for it. tests/data/arm64/ keeps the lists of an image built
the slow way (everything emulated); the arm64 test (bookworm) and the benchmark's arm64
section (each release recorded here) compare an image's with them.

    python -m tests.imagelists <cell directory> <output prefix>    (records the lists)

The slow way, to record from: `doit build:<cell> step_cache=no` with stand_ins_begin
(fai_config/lib/stand-ins.sh) made to return 1 at once, then that edit undone.
"""

from __future__ import annotations

import lzma
import re
import sys
from pathlib import Path

from tasks import reproduce
from tasks.system import imagetree

from . import imagefs

# The lists of images built the slow way, one prefix per cell (tests/data/arm64/<cell>.<kind>.xz).
RECORDED = Path(__file__).resolve().parent / "data" / "arm64"
# The kernel's ABI name (6.1.0-56-arm64) changes with every kernel update of a release.
KERNEL = re.compile(r"\d+\.\d+\.\d+-\d+-(arm64|amd64|cloud-arm64|cloud-amd64)")


def _normal(text: str) -> str:
    return KERNEL.sub("<kernel>", text)


def packages(cell_dir: Path) -> list[str]:
    """name and architecture of each package (versions change with every point release)."""
    lines = (cell_dir / "packages.tsv").read_text().splitlines()
    return sorted({_normal(f"{fields[0]} {fields[2]}") for fields in (line.split("\t") for line in lines)})


def files(cell_dir: Path) -> list[str]:
    """type, mode, owner and path of each file of the root file system."""
    image = cell_dir / "disk.raw"
    with imagetree.extracted(image, imagefs.tools_of(image)) as root:
        tree = dict(reproduce.walk(root))
    return sorted({_normal(f"{e['type']} {e['mode']} {e['owner']} {path}") for path, e in tree.items()})


def initramfs(cell_dir: Path) -> list[str]:
    """type, mode and name of each member of the image's initramfs."""
    from tasks.stages import initramfs as reader

    image = cell_dir / "disk.raw"
    with imagefs.tree(image) as root:
        listed = []
        for initrd in sorted(Path(root, "boot").glob("initrd.img-*")):
            listed += [f"{oct(m.mode)} {_normal(m.name)}" for m in reader.members(initrd)]
    return sorted(set(listed))


LISTS = {"packages": packages, "files": files, "initramfs": initramfs}


def recorded(prefix: Path, kind: str) -> Path:
    """Where a list is kept: xz-compressed (the file list of an image is 1.5 MB of text)."""
    return prefix.with_name(f"{prefix.name}.{kind}.xz")


def read(prefix: Path, kind: str) -> list[str]:
    return lzma.decompress(recorded(prefix, kind).read_bytes()).decode().splitlines()


def differences(cell_dir: Path, prefix: Path) -> dict[str, tuple[list[str], list[str]]]:
    """Per list, what the recorded one has and the image lacks, and what the image has besides."""
    found = {}
    for kind, lister in LISTS.items():
        listed, expected = set(lister(cell_dir)), set(read(prefix, kind))
        found[kind] = (sorted(expected - listed), sorted(listed - expected))
    return found


def main(cell_dir: Path, prefix: Path) -> None:
    for kind, lister in LISTS.items():
        recorded(prefix, kind).write_bytes(lzma.compress(("\n".join(lister(cell_dir)) + "\n").encode(), preset=9))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
