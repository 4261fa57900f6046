"""Reading an initramfs: members of a newc cpio in each compression, and programs of another architecture."""

import gzip
import lzma
import subprocess
from pathlib import Path

import pytest

from tasks.stages import initramfs


def elf(machine: int) -> bytes:
    return b"\x7fELF" + bytes(14) + machine.to_bytes(2, "little") + bytes(44)


def newc(entries: list[tuple[str, int, bytes]]) -> bytes:
    out = b""
    for ino, (name, mode, data) in enumerate([*entries, ("TRAILER!!!", 0, b"")], 1):
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0]
        header = b"070701" + b"".join(f"{f:08x}".encode() for f in fields)
        out += header + name.encode() + b"\0"
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
    return out


ENTRIES = [
    ("usr", 0o40755, b""),
    ("usr/bin/kmod", 0o100755, elf(183)),
    ("init", 0o100755, b"#!/bin/sh\n"),
    ("lib", 0o120777, b"usr/lib"),
]


@pytest.mark.parametrize("compression", ["zstd", "gzip", "xz"])
def test_members_are_read_in_each_compression(tmp_path, compression):
    raw = newc(ENTRIES)
    path = tmp_path / "initrd.img"
    if compression == "zstd":
        path.write_bytes(subprocess.run(["zstd", "-c"], input=raw, capture_output=True, check=True).stdout)
    else:
        path.write_bytes(gzip.compress(raw) if compression == "gzip" else lzma.compress(raw))
    members = list(initramfs.members(path))
    assert [(m.name, m.mode, m.data) for m in members] == ENTRIES
    assert initramfs.foreign_programs(path, "arm64") == []
    assert initramfs.foreign_programs(path, "amd64") == ["usr/bin/kmod"]


def test_an_uncompressed_early_archive_before_the_main_one_is_read_too(tmp_path):
    """What newer initramfs-tools write (trixie): an uncompressed cpio first, then the compressed main one."""
    early = newc([("kernel", 0o40755, b""), ("kernel/x86/microcode/GenuineIntel.bin", 0o100644, b"ucode")])
    main = subprocess.run(["zstd", "-c"], input=newc(ENTRIES), capture_output=True, check=True).stdout
    path = tmp_path / "initrd.img"
    path.write_bytes(early + bytes(512) + main)
    names = [m.name for m in initramfs.members(path)]
    assert names == ["kernel", "kernel/x86/microcode/GenuineIntel.bin", *(e[0] for e in ENTRIES)]
    assert initramfs.foreign_programs(path, "amd64") == ["usr/bin/kmod"]


def test_a_host_program_in_an_arm64_initramfs_fails_the_check(tmp_path, capsys):
    path = tmp_path / "initrd.img"
    path.write_bytes(gzip.compress(newc([*ENTRIES, ("usr/bin/cp", 0o100755, elf(62))])))
    assert initramfs.main(["check", str(path), "arm64"]) == 1
    assert "another architecture than arm64 in the initramfs: usr/bin/cp" in capsys.readouterr().out
    assert initramfs.main(["check", str(path), "amd64"]) == 1  # kmod is arm64's


def test_an_unknown_compression_is_named(tmp_path):
    path = tmp_path / "initrd.img"
    path.write_bytes(b"BZh9" + bytes(10))
    with pytest.raises(ValueError, match="compressed in a way this does not read"):
        list(initramfs.members(Path(path)))
