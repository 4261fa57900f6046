"""tasks/stages/diskassembly.py: GRUB's BIOS code written as grub-bios-setup writes it,
and FAI's command followed by the assembly only when it succeeded."""

import struct
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.stages import diskassembly
from tasks.stages.diskassembly import SECTOR, Partition

REPO = Path(__file__).resolve().parent.parent


def grub_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "boot/grub/i386-pc"
    directory.mkdir(parents=True)
    (directory / "boot.img").write_bytes(bytes(range(256)) * 2)
    (directory / "core.img").write_bytes(b"\xaa" * (3 * SECTOR + 100))
    return directory


def test_bios_boot_code_points_at_core_img_and_keeps_the_partition_table(tmp_path):
    disk = tmp_path / "disk.raw"
    mbr = bytearray(SECTOR)
    mbr[0x1B8:0x200] = b"\x55" * (0x200 - 0x1B8)  # disk signature, protective MBR entry, boot signature
    mbr[0x03:0x5A] = b"\x11" * (0x5A - 0x03)  # a BPB the disk already had
    disk.write_bytes(bytes(mbr) + bytes(4 << 20))
    grub = grub_dir(tmp_path)
    diskassembly.write_bios_boot(disk, Partition(14, 2048 * SECTOR, 6144 * SECTOR), grub)

    written = disk.read_bytes()
    boot = (grub / "boot.img").read_bytes()
    assert written[:3] == boot[:3], "boot.img's jump"
    assert written[0x03:0x5A] == b"\x11" * (0x5A - 0x03), "the disk's own BPB stays"
    assert struct.unpack_from("<Q", written, 0x5C)[0] == 2048, "boot.img loads core.img from its partition"
    assert written[0x66:0x68] == b"\x90\x90", "the BIOS's boot drive is trusted"
    assert written[0x68:0x1B8] == boot[0x68:0x1B8]
    assert written[0x1B8:0x200] == b"\x55" * (0x200 - 0x1B8), "the partition table stays"
    core = written[2048 * SECTOR : 2048 * SECTOR + 3 * SECTOR + 100]
    assert struct.unpack_from("<Q", core, SECTOR - 12)[0] == 2049, "core.img reads on from its next sector"
    assert core[: SECTOR - 12] == b"\xaa" * (SECTOR - 12) and core[SECTOR:] == b"\xaa" * (2 * SECTOR + 100)


def test_a_core_img_larger_than_its_partition_is_refused(tmp_path):
    disk = tmp_path / "disk.raw"
    disk.write_bytes(bytes(1 << 20))
    with pytest.raises(diskassembly.AssemblyFailed, match="larger than its partition"):
        diskassembly.write_bios_boot(disk, Partition(14, 2048 * SECTOR, 2 * SECTOR), grub_dir(tmp_path))


def run_main(tmp_path: Path, command: str, tools: Path) -> subprocess.CompletedProcess:
    disk, tree, esp = tmp_path / "disk.raw", tmp_path / "memory" / "tree", tmp_path / "esp.img"
    tree.parent.mkdir()
    args = [str(p) for p in (disk, tree, esp, tools)]
    return subprocess.run(
        [sys.executable, "-m", "tasks.stages.diskassembly", *args, "--", "sh", "-c", command],
        capture_output=True,
        text=True,
        cwd=REPO,
    )


def test_a_failed_fai_is_not_followed_by_the_assembly(tmp_path):
    done = run_main(tmp_path, "echo installing; exit 3", tmp_path / "no-tools")
    assert done.returncode == 3
    assert done.stdout == "installing\n", "nothing was assembled"


def test_an_assembly_that_fails_says_so_in_one_line(tmp_path, pinned_tools):
    done = run_main(tmp_path, "echo installed", pinned_tools)  # no disk.raw was made
    assert done.returncode == diskassembly.ASSEMBLY_FAILED
    assert done.stdout.startswith(f"installed\n{diskassembly.ASSEMBLY_LINE}\nERROR: disk assembly: cannot read")
