"""Test helper: mount a partition of a raw disk image (real loop device, offset)."""

import contextlib
import json
import subprocess
import tempfile
from pathlib import Path


def partitions(image: Path) -> list[dict]:
    table = json.loads(
        subprocess.run(["sfdisk", "--json", str(image)], capture_output=True, text=True, check=True).stdout
    )["partitiontable"]
    sector = table.get("sectorsize", 512)
    return [{**p, "offset": p["start"] * sector, "bytes": p["size"] * sector} for p in table["partitions"]]


@contextlib.contextmanager
def mounted(image: Path, partition_index: int):
    """Mount the partition (sfdisk order) read-write; always unmount and detach."""
    part = partitions(image)[partition_index]
    device = subprocess.run(
        ["losetup", "--find", "--show", "--offset", str(part["offset"]), "--sizelimit", str(part["bytes"]), str(image)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    try:
        with tempfile.TemporaryDirectory(prefix="image-mount.") as mountpoint:
            subprocess.run(["mount", device, mountpoint], check=True)
            try:
                yield Path(mountpoint)
            finally:
                subprocess.run(["umount", mountpoint], check=True)
    finally:
        subprocess.run(["losetup", "--detach", device], check=True)


def root_partition_index(image: Path) -> int:
    """The partition holding the root file system: the largest one."""
    parts = partitions(image)
    return max(range(len(parts)), key=lambda i: parts[i]["bytes"])
