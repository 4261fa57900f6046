"""What an initramfs holds, read without unpacking it (newc cpio, compressed).

The build checks its images' initramfs with it (fai_config/scripts/DEBIAN/20-initramfs):
every ELF program in it is of the image's architecture, so no host program that stood
in during a foreign build went in. The arm64 test lists the members it holds.

    python -m tasks.stages.initramfs check <initrd> <debian architecture>
"""

from __future__ import annotations

import gzip
import lzma
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# ELF e_machine of each Debian architecture the images are built for.
ELF_MACHINE = {"amd64": 62, "arm64": 183}
_FILE, _TYPE = 0o100000, 0o170000


@dataclass(frozen=True)
class Member:
    name: str
    mode: int
    data: bytes

    @property
    def elf_machine(self) -> int | None:
        if self.mode & _TYPE == _FILE and self.data[:4] == b"\x7fELF":
            return int.from_bytes(self.data[18:20], "little")
        return None


def _decompress(data: bytes, path: Path) -> bytes:
    if data[:4] == b"\x28\xb5\x2f\xfd":
        return subprocess.run(["zstd", "-dc"], input=data, check=True, capture_output=True).stdout
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    if data[:6] == b"\xfd7zXZ\x00":
        return lzma.decompress(data)
    raise ValueError(f"{path}: an initramfs compressed in a way this does not read (zstd, gzip, xz)")


def _archive(data: bytes, offset: int) -> tuple[list[Member], int]:
    """The members of the uncompressed cpio archive at offset, and where it ends."""
    found = []
    while data[offset : offset + 6] in (b"070701", b"070702"):
        header = data[offset : offset + 110]
        mode, size, name_size = int(header[14:22], 16), int(header[54:62], 16), int(header[94:102], 16)
        name = data[offset + 110 : offset + 110 + name_size - 1].decode()
        offset = (offset + 110 + name_size + 3) & ~3
        body = data[offset : offset + size]
        offset = (offset + size + 3) & ~3
        if name == "TRAILER!!!":
            break
        found.append(Member(name, mode, body))
    return found, offset


def _archives(data: bytes) -> tuple[list[Member], int]:
    """The members of the uncompressed archives data starts with, one after the other, and where they end."""
    found: list[Member] = []
    offset = 0
    while data[offset : offset + 6] in (b"070701", b"070702"):
        members_of_one, offset = _archive(data, offset)
        found += members_of_one
        while offset < len(data) and data[offset] == 0:  # padding between archives
            offset += 1
    return found, offset


def members(path: Path) -> Iterator[Member]:
    """Every member of every archive in the file: uncompressed ones first (early firmware,
    microcode), as the kernel reads them, then the compressed main archive."""
    data = path.read_bytes()
    found, end = _archives(data)
    yield from found
    if end < len(data):
        yield from _archives(_decompress(data[end:], path))[0]


def foreign_programs(path: Path, arch: str) -> list[str]:
    machine = ELF_MACHINE[arch]
    return [m.name for m in members(path) if m.elf_machine not in (None, machine)]


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] != "check":
        print("usage: python -m tasks.stages.initramfs check <initrd> <architecture>", file=sys.stderr)
        return 2
    path, arch = Path(argv[1]), argv[2]
    foreign = foreign_programs(path, arch)
    if foreign:
        print(f"{path}: programs of another architecture than {arch} in the initramfs: {' '.join(foreign)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
