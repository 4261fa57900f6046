"""A storage's catalogue in simplestreams' format, which sstream-query, sstream-mirror and the
tools built on them (glance-simplestreams-sync, uvtool) read:

    streams/v1/index.json                                   the streams, and their products
    streams/v1/org.debian.cloud:daily:download.json         the dailies: products -> versions -> items
    streams/v1/org.debian.cloud:released:download.json      the releases

A product is a release, vendor and architecture (org.debian.cloud:12:genericcloud:amd64), with
the fields simplestreams' consumers filter on (os, release, release_codename, release_title,
arch, version); its versions are the image versions; its items are the image files published,
one per format (qcow2 as `disk1.img`, as Ubuntu's are), each with its path from the storage's
root, its size, its SHA-512 and its SHA-256 (SHA256SUMS), which the tools check on download; a
qcow2 is also an Incus/LXD VM image, its metadata tarball the `incus.tar.xz` and `lxd.tar.xz` items
with its fingerprint (FINGERPRINTS) and the qcow2 the `disk-kvm.img` item (tasks/stages/incus.py),
and each product has the aliases those clients name images by. With a signing key, each file is
written signed too, as `.sjson` (gpg --clearsign), the index.sjson naming the signed products;
sstream-query and sstream-mirror check them with --keyring.

The storage wins: the catalogue is made from what the storage holds, never kept beside it. A
version is listed once its SHA512SUMS is there (publication writes it after the files it lists),
each file as SHA512SUMS gives it and only when the storage still holds it; so a publication
interrupted before SHA512SUMS is not in the catalogue, and one cut between its files and the
catalogue is listed by the next writing. Publication, the release and cleanup write it again,
under the storage's lock, as their last step; `doit catalogue` writes it from the storage
alone, for storages filled before. Each file is written under a temporary name and moved into
place, the products before the index that names them.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from email.utils import formatdate

from tasks.errors import StageFailed
from tasks.model.arch import Format
from tasks.model.matrix import IMAGE_NAME
from tasks.model.version import ordered
from tasks.stages import incus, publish
from tasks.storage import Backend
from tasks.system.checksum import parse_sums
from tasks.system.signing import SIGNATURE_SUFFIX, Signer

STREAMS = "streams/v1"
INDEX = f"{STREAMS}/index.json"
SIGNED_INDEX = f"{STREAMS}/index.sjson"
OS = "debian"
PREFIX = "org.debian.cloud"
# The streams: where each finds its versions, as tasks/stages/publish.py lays them out.
DAILY, RELEASED = "daily", "released"
STREAM_DIRS = {DAILY: publish.daily_dir, RELEASED: publish.release_dir}  # (release, version) -> directory
# Each image format as an item of a version: its ftype (qcow2 as `disk1.img`, what tools filter on).
FTYPES = {
    Format.QCOW2: "disk1.img",
    Format.TAR_XZ: "tar.xz",
    Format.VHD_TAR_XZ: "vhd.tar.xz",
    Format.TAR_GZ: "tar.gz",
}
_FTYPE_OF = {fmt.value: ftype for fmt, ftype in FTYPES.items()}


def content_id(stream: str) -> str:
    return f"{PREFIX}:{stream}:download"


def products_path(stream: str, signed: bool = False) -> str:
    return f"{STREAMS}/{content_id(stream)}.{'sjson' if signed else 'json'}"


def product_name(release_version: str, vendor: str, arch: str) -> str:
    return f"{PREFIX}:{release_version}:{vendor}:{arch}"


@dataclass(frozen=True)
class Image:
    """One version of one product, as `doit images` lists it."""

    stream: str
    release: str
    vendor: str
    arch: str
    version: str
    formats: tuple[str, ...]  # the image formats' ftypes
    signed: bool
    vm: bool  # with the items an Incus or LXD VM is launched from

    @property
    def cell(self) -> str:
        return f"{self.release}-{self.vendor}-{self.arch}"


@dataclass(frozen=True)
class VersionDir:
    """A whole version directory of the storage, as the web index shows it."""

    release: str
    stream: str
    version: str
    directory: str
    files: dict[str, str]  # name -> SHA-512, as SHA512SUMS lists them
    signed: bool


def scan(
    backend: Backend, known: dict[tuple[str, str], int] | None = None, directories: list[VersionDir] | None = None
) -> dict[str, dict]:
    """The products of each stream, from what the storage holds; each whole version also into directories.

    known: (path, sha512) -> size of files listed before: a file SHA512SUMS still lists with the same
    digest keeps its size, and only the others are asked of the storage (a request each, which a
    publication would otherwise make for every file of every version)."""
    streams: dict[str, dict] = {DAILY: {}, RELEASED: {}}
    for release in sorted(backend.dirs("")):
        for stream, directory_of in STREAM_DIRS.items():
            parent = posixpath.dirname(directory_of(release, "v"))
            for version in ordered(backend.dirs(parent)):
                found = _add_version(backend, streams[stream], release, stream, parent, version, known or {})
                if found and directories is not None:
                    directories.append(found)
    return streams


def sizes(streams: dict[str, dict]) -> dict[tuple[str, str], int]:
    """(path, sha512) -> size of every item: what a scan may take as known."""
    return {
        (item["path"], item["sha512"]): item["size"]
        for products in streams.values()
        for product in products.values()
        for version in product["versions"].values()
        for item in version["items"].values()
    }


def _add_version(
    backend: Backend,
    products: dict,
    release: str,
    stream: str,
    parent: str,
    version: str,
    known: dict[tuple[str, str], int],
) -> VersionDir | None:
    directory = posixpath.join(parent, version)
    listed = parse_sums(backend.read(posixpath.join(directory, publish.SUMS)) or "")
    if not listed:
        return None  # not (yet) a whole version
    sha256s = parse_sums(backend.read(posixpath.join(directory, publish.SHA256_SUMS)) or "")
    signed = backend.stat(posixpath.join(directory, publish.SUMS + SIGNATURE_SUFFIX)) is not None
    held: dict[str, dict] = {}  # file name -> its item, of the files listed and still held
    entries: dict[str, dict] = {}  # image name -> its version's entry, for the images held
    for name, sha512 in sorted(listed.items()):
        parts = publish.public_name_parts(name)
        found = IMAGE_NAME.fullmatch(parts[0]) if parts else None
        if not parts or not found or found["version"] != version:
            continue
        if parts[1] not in _FTYPE_OF and parts[1] != incus.SUFFIX:
            continue  # not an item: a manifest, an SBOM, ...
        path = posixpath.join(directory, name)
        size = known.get((path, sha512)) or backend.stat(path)
        if size is None:
            continue  # listed, but no longer held: the storage wins
        sha256 = {"sha256": sha256s[name]} if name in sha256s else {}  # versions published before it have none
        held[name] = {"path": path, "size": size, "sha512": sha512, **sha256}
        if parts[1] not in _FTYPE_OF:
            continue  # a VM's metadata: listed with its disk, below
        number = found["release_version"]
        product = products.setdefault(
            product_name(number, found["vendor"], found["arch"]),
            {
                "os": OS,
                "release": release,
                "release_codename": release,
                "release_title": f"Debian {number} ({release})" if number != release else f"Debian {release}",
                "version": number,
                "arch": found["arch"],
                "vendor": found["vendor"],
                "variant": found["vendor"],  # what Incus and LXD name it
                "aliases": incus.aliases(stream == DAILY, number, release, found["vendor"]),
                "versions": {},
            },
        )
        entry = entries[parts[0]] = product["versions"].setdefault(
            version, {"label": stream, "pubname": parts[0], "signed": signed, "items": {}}
        )
        ftype = _FTYPE_OF[parts[1]]
        entry["items"][ftype] = {"ftype": ftype, **held[name]}
    _add_vm_items(entries, held, parse_sums(backend.read(posixpath.join(directory, incus.FINGERPRINTS)) or ""))
    return VersionDir(release, stream, version, directory, listed, signed)


def _add_vm_items(entries: dict[str, dict], held: dict[str, dict], fingerprints: dict[str, str]) -> None:
    """Each image's Incus/LXD VM items (tasks/stages/incus.py): its metadata tarball under the ftypes
    the clients look for, with the fingerprint publication recorded, and its qcow2 as the disk; none
    without all three."""
    for image_name, entry in entries.items():
        tarball, disk = (held.get(f"{image_name}.{suffix}") for suffix in (incus.SUFFIX, incus.DISK_FORMAT.value))
        fingerprint = fingerprints.get(f"{image_name}.{incus.SUFFIX}")
        if tarball is None or disk is None or fingerprint is None:
            continue
        for ftype in incus.METADATA_FTYPES:
            entry["items"][ftype] = {"ftype": ftype, **tarball, incus.FINGERPRINT_FIELD: fingerprint}
        entry["items"][incus.DISK_FTYPE] = {"ftype": incus.DISK_FTYPE, **disk}


def documents(streams: dict[str, dict], updated: str, signed: bool = False) -> dict[str, dict]:
    """The catalogue's files by path: one products file per stream, and the index (signed: the
    .sjson paths, the index naming the signed products)."""
    files: dict[str, dict] = {}
    index: dict[str, dict] = {}
    for stream, products in streams.items():
        files[products_path(stream, signed)] = {
            "format": "products:1.0",
            "content_id": content_id(stream),
            "datatype": "image-downloads",
            "updated": updated,
            "products": products,
        }
        index[content_id(stream)] = {
            "format": "products:1.0",
            "datatype": "image-downloads",
            "path": products_path(stream, signed),
            "updated": updated,
            "products": sorted(products),
        }
    files[SIGNED_INDEX if signed else INDEX] = {"format": "index:1.0", "updated": updated, "index": index}
    return files


def write(
    backend: Backend, signer: Signer | None = None, anew: bool = False, changed: tuple[str, ...] = ()
) -> list[Image]:
    """Write the catalogue and the web index from the storage, under its lock (the caller holds it);
    what it lists.

    signer: also write each catalogue file signed, as simplestreams' .sjson (gpg --clearsign), whose
    index names the signed products; without one, signed files are removed (they would vouch for an
    older catalogue). anew: ask the storage for every file's size and write every version's page
    (`doit catalogue`); else the sizes the catalogue lists for files of the same digest are taken, and
    only the pages of the root, the releases and the `changed` version directories are written."""
    from tasks.stages import webindex  # Jinja2: only when a storage is written

    listed = None if anew else _readable(backend)
    found: list[VersionDir] = []
    streams = scan(backend, sizes(listed) if listed else None, found)
    parents = {(f.release, f.stream): posixpath.dirname(f.directory) for f in found}
    latest = {key: version for key, parent in parents.items() if (version := publish.current_latest(backend, parent))}
    item_sizes = {path: size for (path, _), size in sizes(streams).items()}
    for path, html in webindex.pages(found, latest, item_sizes, None if anew else changed).items():
        backend.put_text_atomically(path, html)
    updated = formatdate(usegmt=True)
    for path, document in documents(streams, updated).items():  # the index last
        backend.put_text_atomically(path, json.dumps(document, indent=1, sort_keys=True) + "\n")
    for path, document in documents(streams, updated, signed=True).items():
        if signer is None:
            backend.remove(path)
        else:
            text = json.dumps(document, indent=1, sort_keys=True) + "\n"
            backend.put_text_atomically(path, signer.clearsign(text.encode()).decode())
    return images(streams)


def images(streams: dict[str, dict]) -> list[Image]:
    return [
        Image(
            stream,
            p["release"],
            p["vendor"],
            p["arch"],
            version,
            tuple(sorted(ftype for ftype in v["items"] if ftype in FTYPES.values())),
            v["signed"],
            incus.DISK_FTYPE in v["items"],
        )
        for stream, products in streams.items()
        for p in products.values()
        for version, v in p["versions"].items()
    ]


class CatalogueUnreadable(StageFailed):
    pass


def _readable(backend: Backend) -> dict[str, dict] | None:
    """The catalogue as it is, or None when there is none or it cannot be read: then made anew."""
    try:
        return read(backend)
    except CatalogueUnreadable:
        return None


def read(backend: Backend) -> dict[str, dict] | None:
    """The products of each stream, as the storage's catalogue lists them; None without a catalogue."""
    text = backend.read(INDEX)
    if text is None:
        return None
    try:
        streams = {}
        for cid, entry in json.loads(text)["index"].items():
            stream = cid.removeprefix(f"{PREFIX}:").removesuffix(":download")
            products = json.loads(backend.read(entry["path"]) or "{}")["products"]
            if not isinstance(products, dict):
                raise TypeError("products is not a mapping")
            streams[stream] = products
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise CatalogueUnreadable(
            f"{backend.name}/{STREAMS}: the catalogue cannot be read ({type(error).__name__}: {error}); "
            f"`doit catalogue` writes it again from the storage"
        ) from None
    return streams
