"""Incus and LXD virtual machines: what lets them launch a published image from the storage's
catalogue (tasks/stages/catalogue.py).

An Incus (or LXD) VM image is two files: a metadata tarball holding `metadata.yaml` (architecture,
creation date, properties) and the disk, which may be qcow2. Its fingerprint, which the client
checks after download, is the SHA-256 of the tarball's bytes followed by the disk's. A cell that
publishes a qcow2 publishes such a tarball beside it (`<image name>.incus.tar.xz`); the catalogue
lists it as the version's `incus.tar.xz` and `lxd.tar.xz` items (the names each client looks for)
with the fingerprint, and the qcow2 a second time as `disk-kvm.img`.

The fingerprint cannot be made from the two files' own digests, and the catalogue is made from the
storage alone, so publication writes it into the version directory's FINGERPRINTS file, in
sha256sum's layout: `<fingerprint>  <tarball name>`; `cat <tarball> <qcow2> | sha256sum` checks it.
"""

from __future__ import annotations

import hashlib
import io
import lzma
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import yaml

from tasks.model.arch import Format
from tasks.model.matrix import Cell
from tasks.model.records import Manifest
from tasks.system import atomic
from tasks.system.checksum import CHUNK

SUFFIX = "incus.tar.xz"  # the metadata tarball's public name: <image name>.incus.tar.xz
DISK_FORMAT = Format.QCOW2  # the image file that is the VM's disk
FINGERPRINTS = "FINGERPRINTS"  # <fingerprint>  <tarball name>, per version directory
# The catalogue's items: the metadata under the ftype each client looks for, the disk under its own.
METADATA_FTYPES = ("incus.tar.xz", "lxd.tar.xz")
DISK_FTYPE = "disk-kvm.img"
FINGERPRINT_FIELD = "combined_disk-kvm-img_sha256"


def applies(cell: Cell) -> bool:
    """Whether the cell's images get a metadata tarball: those published as qcow2."""
    return DISK_FORMAT.value in cell.vendor.formats


def aliases(daily: bool, release_version: str, release: str, vendor: str) -> str:
    """A product's names for Incus and LXD, as its catalogue gives them (comma-separated): debian/12/
    genericcloud and debian/bookworm/genericcloud for releases, with /daily for dailies. The client adds
    /<arch> to each, and gives each name to the newest version of its product."""
    tail = "/daily" if daily else ""
    return ",".join(dict.fromkeys(f"debian/{name}/{vendor}{tail}" for name in (release_version, release)))


def metadata(cell: Cell, manifest: Manifest) -> dict:
    """metadata.yaml of the image, as Incus and LXD read it."""
    started = datetime.fromisoformat(manifest.build["started"])
    release = f"Debian {cell.release.version} ({cell.release.name})"
    return {
        "architecture": cell.arch.kind.spec.uname,  # the kernel's name: x86_64, aarch64
        "creation_date": int((started if started.tzinfo else started.replace(tzinfo=UTC)).timestamp()),
        "properties": {
            "os": "Debian",
            "release": cell.release.name,
            "variant": cell.vendor.name,
            "architecture": cell.arch.name,
            "serial": manifest.version,
            "description": f"{release} {cell.vendor.name} {cell.arch.name} {manifest.version}",
        },
        "templates": {},
    }


def write_tarball(path: Path, cell: Cell, manifest: Manifest) -> None:
    """The metadata tarball: the same bytes for the same manifest (its date, owner and mode fixed)."""
    document = metadata(cell, manifest)
    text = yaml.safe_dump(document, sort_keys=True).encode()
    member = tarfile.TarInfo("metadata.yaml")
    member.size, member.mtime, member.mode = len(text), document["creation_date"], 0o644
    member.uname = member.gname = "root"
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(member, io.BytesIO(text))
    with atomic.output(path) as partial:
        partial.write_bytes(lzma.compress(archive.getvalue(), format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64))


def fingerprint(tarball: Path, disk: Path) -> str:
    """What Incus and LXD call the image: SHA-256 of the tarball's bytes, then the disk's."""
    digest = hashlib.sha256()
    for path in (tarball, disk):
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def fingerprints(files: dict[str, Path]) -> dict[str, str]:
    """Tarball name -> fingerprint, for each tarball among files (public name -> local file) whose
    disk is there too."""
    found = {}
    for name, path in files.items():
        image_name = name.removesuffix("." + SUFFIX)
        disk = files.get(f"{image_name}.{DISK_FORMAT.value}")
        if image_name != name and disk is not None:
            found[name] = fingerprint(path, disk)
    return found
