"""A disk image assembled from files: no loop device, no mount, no privilege.

FAI installs the image into a plain directory. The config space's partition
hook has already written the GPT into disk.raw and made the ESP as a FAT
image of its own, which the boot loader scripts filled with mtools
(fai_config/hooks/partition.DEBIAN, lib/grub.sh). Once FAI is done, the
builder:

- makes the root file system from the finished tree with `mke2fs -d`, in
  place in partition 1 (`-E offset=`). mke2fs lays the files out in a fixed
  order and clamps every time to SOURCE_DATE_EPOCH, so the same tree gives
  the same bytes, which a file system the kernel filled does not;
- copies the ESP's image into partition 15;
- on a disk with a BIOS boot partition, writes GRUB's boot code as bytes, as
  grub-bios-setup would: core.img at the start of that partition, told where
  it is, and boot.img's code into the protective MBR, told where core.img is.

Every program is the builder's pinned one (tasks/system/toolstree.py).

The tree lives on a tmpfs of the build's sandbox (a tree on the host's disk
costs the build its metadata writes, several times the whole build on some
hosts), so FAI and the assembly run there one after the other:

    python -m tasks.stages.diskassembly DISK TREE ESP TOOLS_BIN -- fai ARGS...
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tasks.errors import StageFailed
from tasks.stages import imagefacts
from tasks.system import proc

SECTOR = 512
ROOT, BIOS_BOOT, ESP = 1, 14, 15
# grub-bios-setup's places in boot.img (GRUB's include/grub/i386/pc/boot.h)
BOOT_CODE_END = 0x1B8  # where the disk signature and partition table begin
BPB_START, BPB_END = 0x03, 0x5A  # a FAT boot sector's parameters: the disk's own bytes stay
KERNEL_SECTOR = 0x5C  # u64: the sector core.img starts at
DRIVE_CHECK = 0x66  # two bytes made NOPs: the BIOS's boot drive is trusted on a hard disk
# and in core.img's first sector (diskboot.img): the blocklist's u64 start sector
CORE_BLOCKLIST_START = SECTOR - 12


class AssemblyFailed(StageFailed):
    pass


@dataclass(frozen=True)
class Partition:
    number: int
    offset: int  # bytes
    size: int  # bytes


def partitions(disk: Path, tools: Path) -> dict[int, Partition]:
    """The disk's partitions by number, as its GPT has them (read by the pinned sfdisk)."""
    try:
        table = imagefacts.partition_table(str(disk), sfdisk=str(tools / "sfdisk"))
    except proc.CommandFailed as failed:
        raise AssemblyFailed(f"cannot read the partition table: {failed.last_line}") from None
    sector = table["sector_size"]
    return {
        part["number"]: Partition(part["number"], part["start"] * sector, part["size"] * sector)
        for part in table["partitions"]
    }


def assemble(disk: Path, tree: Path, esp: Path, tools: Path, env: dict[str, str]) -> None:
    """Fill the disk: root file system from `tree`, the ESP from `esp`, GRUB's BIOS code from the tree.
    `env` gives the file system's identifiers and the build's time (IMAGE_FSUUID_ROOT,
    IMAGE_EXT4_HASH_SEED, IMAGE_SOURCE_DATE_EPOCH)."""
    parts = partitions(disk, tools)
    if ROOT not in parts or ESP not in parts:
        raise AssemblyFailed(f"{disk}: the layout has no partition {ROOT} (root) or {ESP} (ESP)")
    make_root(disk, parts[ROOT], tree, tools, env)
    copy_into(esp, disk, parts[ESP])
    if BIOS_BOOT in parts:
        write_bios_boot(disk, parts[BIOS_BOOT], tree / "boot/grub/i386-pc")


def make_root(disk: Path, root: Partition, tree: Path, tools: Path, env: dict[str, str]) -> None:
    epoch = env["IMAGE_SOURCE_DATE_EPOCH"]
    # The times mke2fs stamps (the superblock's, the root directory's) are the build's too.
    clock = {**_tools_env(), "SOURCE_DATE_EPOCH": epoch, "E2FSPROGS_FAKE_TIME": epoch}
    options = ",".join(
        (
            f"offset={root.offset}",
            f"hash_seed={env['IMAGE_EXT4_HASH_SEED']}",
            "nodiscard",  # a discard would punch the whole file, partition table included
            "assume_storage_prezeroed=1",  # a fresh sparse file: unused blocks stay holes
        )
    )
    _run(
        [str(tools / "mke2fs"), "-q", "-F", "-t", "ext4", "-U", env["IMAGE_FSUUID_ROOT"], "-E", options]
        + ["-d", str(tree), str(disk), f"{root.size // 1024}k"],
        "make the root file system from the tree",
        env=clock,
    )
    # No fsck by mount count or age.
    _run([str(tools / "tune2fs"), "-c", "0", "-i", "0", f"{disk}?offset={root.offset}"], "tune it", env=clock)


def copy_into(source: Path, disk: Path, part: Partition) -> None:
    """`source`'s data regions into the partition; its holes stay holes in the disk."""
    size = source.stat().st_size
    if size > part.size:
        raise AssemblyFailed(f"{source} ({size} bytes) does not fit partition {part.number} ({part.size} bytes)")
    with open(source, "rb") as src, open(disk, "r+b") as dst:
        position = 0
        while position < size:
            try:
                start = os.lseek(src.fileno(), position, os.SEEK_DATA)
            except OSError:  # nothing but a hole up to the end
                break
            end = os.lseek(src.fileno(), start, os.SEEK_HOLE)
            os.copy_file_range(src.fileno(), dst.fileno(), end - start, start, part.offset + start)
            position = end


def write_bios_boot(disk: Path, bios_boot: Partition, grub_dir: Path) -> None:
    """GRUB's BIOS boot code, as grub-bios-setup writes it (lib/grub.sh made core.img for this disk)."""
    core = (grub_dir / "core.img").read_bytes()
    boot = bytearray((grub_dir / "boot.img").read_bytes())
    if len(boot) != SECTOR or len(core) > bios_boot.size:
        raise AssemblyFailed(f"{grub_dir}: boot.img is not one sector, or core.img is larger than its partition")
    first = bios_boot.offset // SECTOR
    core_image = bytearray(core)
    struct.pack_into("<Q", core_image, CORE_BLOCKLIST_START, first + 1)
    struct.pack_into("<Q", boot, KERNEL_SECTOR, first)
    boot[DRIVE_CHECK : DRIVE_CHECK + 2] = b"\x90\x90"
    with open(disk, "r+b") as out:
        mbr = bytearray(out.read(SECTOR))
        mbr[:BPB_START] = boot[:BPB_START]
        mbr[BPB_END:BOOT_CODE_END] = boot[BPB_END:BOOT_CODE_END]
        out.seek(0)
        out.write(mbr)
        out.seek(bios_boot.offset)
        out.write(core_image)


def unmount_below(tree: Path) -> None:
    """Nothing mounted in the tree any more (FAI leaves a bound /proc or /sys mounted when it
    cannot unmount it), so that mke2fs copies the tree's own files only."""

    def mounted() -> list[str]:
        points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
        prefix = f"{tree}/"
        return sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True)

    for point in mounted():
        subprocess.run(["umount", "--lazy", point], capture_output=True)
    left = mounted()
    if left:
        raise AssemblyFailed(f"still mounted in the tree: {', '.join(left)}")


def _tools_env() -> dict[str, str]:
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}


def _run(command: list[str], what: str, env: dict[str, str] | None = None) -> str:
    try:
        return proc.run(command, env=env or _tools_env())
    except proc.CommandFailed as failed:
        raise AssemblyFailed(f"cannot {what}: {failed.last_line}") from None


# What the build's log shows when the assembly starts (tasks/stages/fai.py's PhaseClock reads it),
# and the exit status of a failed assembly (FAI's own are below 90).
ASSEMBLY_LINE = "Assembling the disk from the tree"
ASSEMBLY_FAILED = 90


def main(argv: list[str]) -> int:
    """FAI's command, then, if it succeeded, the assembly: the exit status of the first that failed."""
    disk, tree, esp, tools = (Path(a) for a in argv[:4])
    if argv[4] != "--":
        raise SystemExit("usage: python -m tasks.stages.diskassembly DISK TREE ESP TOOLS_BIN -- COMMAND...")
    tree.mkdir()  # on the sandbox's tmpfs
    # PYTHONPATH found this module; FAI and the image's programs go without it.
    status = subprocess.run(argv[5:], env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}).returncode
    if status != 0:
        return status
    print(ASSEMBLY_LINE, flush=True)
    started = time.monotonic()
    try:
        unmount_below(tree)
        assemble(disk, tree, esp, tools, dict(os.environ))
    except (StageFailed, OSError) as error:  # ours, or a tool the tree lacks
        print(f"ERROR: disk assembly: {error}", flush=True)
        return ASSEMBLY_FAILED
    print(f"Disk assembled in {time.monotonic() - started:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
