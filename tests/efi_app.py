"""A tiny UEFI application and a disk that boots it: the UEFI counterpart of qemu.boot_sector.

The application prints a message through the firmware's console (which
OVMF copies to the serial port) and then spins, so a test can watch real
firmware boot to a chosen console text in seconds. It is a PE32+ image
written field by field: position-independent code, no relocations, one
section. The disk is a FAT file system (no partition table) holding it at
the removable-media path, which OVMF boots before trying the network.
"""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

_ALIGN_FILE, _ALIGN_SECTION = 0x200, 0x1000
_MESSAGE_AT = 0x20  # offset of the UTF-16 message in the section

# efi_main(ImageHandle in rcx, SystemTable in rdx), the Microsoft x64 calling convention:
#   sub rsp, 40                  shadow space, stack aligned for the call
#   mov rcx, [rdx + 64]          SystemTable->ConOut
#   lea rdx, [rip + message]     the string to print
#   call [rcx + 8]               ConOut->OutputString(ConOut, message)
#   jmp $                        spin: the test stops qemu
_SUB, _LOAD_CONOUT, _LEA, _CALL, _SPIN = "4883ec28", "488b4a40", "488d15", "ff5108", "ebfe"


def application(message: str) -> bytes:
    code = bytes.fromhex(_SUB + _LOAD_CONOUT + _LEA)
    after_lea = len(code) + 4
    code += struct.pack("<i", _MESSAGE_AT - after_lea) + bytes.fromhex(_CALL + _SPIN)
    section = code.ljust(_MESSAGE_AT, b"\x90") + (message + "\0").encode("utf-16-le")
    raw_size = -(-len(section) // _ALIGN_FILE) * _ALIGN_FILE
    image_size = _ALIGN_SECTION + -(-len(section) // _ALIGN_SECTION) * _ALIGN_SECTION

    dos = b"MZ".ljust(0x3C, b"\0") + struct.pack("<I", 0x40)
    coff = struct.pack("<HHIIIHH", 0x8664, 1, 0, 0, 0, 240, 0x0022)  # amd64, 1 section, executable
    optional = struct.pack(
        "<HBBIIIIIQIIHHHHHHIIIIHHQQQQII",
        0x20B,
        0,
        0,
        raw_size,
        0,
        0,
        _ALIGN_SECTION,
        _ALIGN_SECTION,  # PE32+, code, entry point, base of code
        0x10000000,
        _ALIGN_SECTION,
        _ALIGN_FILE,
        0,
        0,
        0,
        0,
        0,
        0,
        0,  # image base, alignments, versions
        image_size,
        _ALIGN_FILE,
        0,
        10,
        0,  # sizes, checksum, subsystem: EFI application
        0x10000,
        0x1000,
        0x10000,
        0x1000,
        0,
        16,  # stack and heap, loader flags, 16 data directories
    ) + bytes(16 * 8)  # every directory empty: no relocations needed, the code is position-independent
    text = struct.pack(
        "<8sIIIIIIHHI", b".text", len(section), _ALIGN_SECTION, raw_size, _ALIGN_FILE, 0, 0, 0, 0, 0x60000020
    )  # code, executable, readable
    headers = (dos + b"PE\0\0" + coff + optional + text).ljust(_ALIGN_FILE, b"\0")
    return headers + section.ljust(raw_size, b"\0")


def boot_disk(directory: Path, message: str) -> Path:
    """A FAT disk whose /EFI/BOOT/BOOTX64.EFI prints message (made with mkfs.vfat and mtools)."""
    app = directory / "BOOTX64.EFI"
    app.write_bytes(application(message))
    disk = directory / "uefi-app.img"
    subprocess.run(["mkfs.vfat", "-C", str(disk), "4096"], check=True, capture_output=True)
    env = {"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"}
    for folder in ("::/EFI", "::/EFI/BOOT"):
        subprocess.run(["mmd", "-i", str(disk), folder], check=True, env=env)
    subprocess.run(["mcopy", "-i", str(disk), str(app), "::/EFI/BOOT/BOOTX64.EFI"], check=True, env=env)
    return disk
