"""What makes two builds of one cell and version the same: their time and identifiers.

Upstream draws the disk's GUID, the partition UUIDs and the file system UUID
at random for every build; here they derive from the cell and version
(matrix.yaml declares the deviation), so a rebuild is identical and two
images still never share one. The build's time (IMAGE_SOURCE_DATE_EPOCH: the
time every file of the tree is clamped to in hooks/faiend.LAST, and the
SOURCE_DATE_EPOCH that mke2fs, mtools and initramfs-tools get) derives from
the build's inputs: the
version when it is a date (a daily's 20261125-1532), else the shared base's
time (its archive's, which no file in it is newer than: base.base_time), so a
rebuild from the same base, or from one made again from the same archive,
gets the same (a build without the shared base, where FAI runs debootstrap
itself, is not reproducible: it takes the clock's time). The initramfs's
member times are clamped to the base's time instead (IMAGE_INITRAMFS_EPOCH),
so that a new dated version can reuse it.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from tasks.model.version import Version
from tasks.stages import base as base_module

# The project's URL: our namespace for uuid5 and for the documents' URIs.
NAMESPACE_URL = "https://salsa.debian.org/cloud-team/debian-image-matrix"
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, NAMESPACE_URL)

# The environment variable each identifier reaches the config space by
# (hooks/partition.DEBIAN), and what it names.
IDENTIFIERS = {
    "IMAGE_DISK_GUID": "disk",
    "IMAGE_PARTUUID_ROOT": "partition/root",
    "IMAGE_PARTUUID_ESP": "partition/esp",
    "IMAGE_PARTUUID_BIOS": "partition/bios",
    "IMAGE_FSUUID_ROOT": "filesystem/root",
    "IMAGE_EXT4_HASH_SEED": "filesystem/root/hash-seed",
}
ESP_VOLUME_ID = "IMAGE_ESP_VOLUME_ID"  # vfat's 32-bit volume id, 8 hex digits
# Every variable disk_identifiers sets (the step cache masks their values).
VARIABLES = (*IDENTIFIERS, ESP_VOLUME_ID)


def identifier(cell_name: str, version: str, role: str) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, f"{cell_name}/{version}/{role}")


def disk_identifiers(cell_name: str, version: str) -> dict[str, str]:
    """The environment the partition hook reads: every identifier of the disk."""
    ids = {name: str(identifier(cell_name, version, role)) for name, role in IDENTIFIERS.items()}
    ids[ESP_VOLUME_ID] = identifier(cell_name, version, "filesystem/esp").hex[:8]
    return ids


def source_date_epoch(version: str, base: Path) -> int:
    """The version's own time when its serial is one (Version.moment), else the base tarball's."""
    parsed = Version.of(version)
    moment = parsed.moment if parsed else None
    if moment is not None:
        return int(moment.timestamp())
    return base_module.base_time(base) if base.is_file() else int(time.time())


def initramfs_epoch(version: str, base: Path) -> int:
    """The time mkinitramfs clamps its archive's member times to: the base's, or the build's when older.

    With the build's time, every dated version (by default a new one each run)
    would make an initramfs that differs by those times alone, and the step
    cache could never reuse one across versions (mkinitramfs takes 13 s for the
    cloud kernel here, 32 s for the generic one, minutes under emulation). Every
    file a build from this base writes is newer than the base's time, so it is
    clamped to it in any such build; the base's own files are the same in each.
    A version older than the base (given by hand) still bounds every time.
    """
    build_time = source_date_epoch(version, base)
    return min(build_time, base_module.base_time(base)) if base.is_file() else build_time
