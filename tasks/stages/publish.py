"""The publish stage: images into storage users can reach (a directory, WebDAV or S3).

Layout, as on cloud.debian.org::

    <release>/daily/<version>/<files>     scheduled and everyday builds (publish)
    <release>/daily/latest                the newest daily version (a one-line file)
    <release>/<version>/<files>           releases (tasks/release/step.py)
    <release>/latest                      the newest release version

Each cell publishes its image files, its manifest, its SBOMs, its provenance
(a DSSE envelope), what changed since its previous version (changes.json,
changes.txt) and, beside a qcow2, its Incus/LXD metadata tarball
(tasks/stages/incus.py). Each version directory has a SHA512SUMS listing them
all and, when a signing key is configured (tasks/system/signing.py), its
detached signature SHA512SUMS.asc, written after it; a daily without a key is
published unsigned with a warning, a release refuses. Beside them, for the
catalogue's consumers: SHA256SUMS (the images and the metadata tarballs) and
FINGERPRINTS (each Incus/LXD image's).

- **Nothing is taken on trust.** Every file is compared with what storage
  holds under its name (Backend.holds: read back, or by the checksum S3
  keeps); what differs or is missing is uploaded (checked before it takes its
  name: tasks/storage/backend.py), so publishing again mends a damaged or
  lost file. SHA512SUMS is written after the files it lists, and `latest`
  after SHA512SUMS, so a reader never finds a SHA512SUMS listing a file that
  is missing or different, nor a `latest` naming an incomplete version. A file
  about to be replaced by different content leaves SHA512SUMS first.
- **One writer at a time.** Everything a publication writes is written under
  the storage's own lock (Backend.locked), whatever machine or work
  directory the other writers run in: the cells of a version share its
  SHA512SUMS, and the versions of a release its `latest`.
- **Listed for tools**: the storage's simplestreams catalogue
  (tasks/stages/catalogue.py) is written again, from what it holds, last.
- **Versions in their order** (tasks/model/version.py): `latest` names the
  newest, the previous version is the newest older one, and older dailies
  beyond publish.keep_dailies are deleted, never the version just published
  nor the one `latest` names, nor a directory that is not a version.
"""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path

from tasks.errors import StageFailed
from tasks.model.arch import Format
from tasks.model.layout import CellFiles
from tasks.model.matrix import IMAGE_NAME, Cell, PublishSettings
from tasks.model.records import Manifest, PublishReceipt, RecordError
from tasks.model.version import NotAVersion, Version, newest, ordered
from tasks.stages import changes, incus, provenance
from tasks.stages.manifest import public_name
from tasks.storage import Backend, Location, RetryPolicy
from tasks.system import atomic, signing
from tasks.system.checksum import format_sums, parse_sums, sha256_file, sha512_file

SUMS = "SHA512SUMS"
# The image files' SHA-256, which simplestreams' consumers (LXD, Incus) check: the catalogue reads it.
SHA256_SUMS = "SHA256SUMS"
LATEST = "latest"


def daily_dir(release: str, version: str) -> str:
    return f"{release}/daily/{version}"


def release_dir(release: str, version: str) -> str:
    return f"{release}/{version}"


def version_of(manifest: Manifest, source: Path) -> Version:
    """The manifest's version, which a publication files the image under: refused unless it is one."""
    try:
        return Version.parse(manifest.version)
    except NotAVersion as error:
        raise StageFailed(
            f"{source}: version: {error}; give the image one with doit version=YYYYMMDD-N (the manifest is made "
            "again, the image is not)"
        ) from None


# Any published file: <image name>.<what it is>.
_PUBLIC = re.compile(rf"(?P<name>{IMAGE_NAME.pattern})\.(?P<suffix>.+)")
_FORMATS = frozenset(fmt.value for fmt in Format)


def public_name_parts(name: str) -> tuple[str, str] | None:
    """A published file's image name and what it is (tar.xz, spdx.json, ...); None for other files."""
    found = _PUBLIC.fullmatch(name)
    return (found["name"], found["suffix"]) if found else None


def is_image(name: str) -> bool:
    """An image file: a public name whose suffix is a format (not debian-...-1.incus.tar.xz)."""
    parts = public_name_parts(name)
    return parts is not None and parts[1] in _FORMATS


def has_sha256(name: str) -> bool:
    """A file SHA256SUMS lists: what the catalogue's consumers download and check by SHA-256."""
    parts = public_name_parts(name)
    return parts is not None and (parts[1] in _FORMATS or parts[1] == incus.SUFFIX)


@dataclass(frozen=True)
class Upload:
    source: Path
    name: str
    sha512: str


def publish_directory(
    backend: Backend, directory: str, uploads: list[Upload], signer: signing.Signer | None = None
) -> dict[str, str]:
    """Put uploads into directory and list them in its SHA512SUMS (signed when
    there is a signer); return name -> digest. Called under the storage lock."""
    sums_path = posixpath.join(directory, SUMS)
    listed = parse_sums(backend.read(sums_path) or "")
    entries = {u.name: u.sha512 for u in uploads}
    # A file about to be replaced leaves SHA512SUMS first: it never vouches for a different file.
    replaced = {name for name, digest in entries.items() if listed.get(name, digest) != digest}
    if replaced:
        backend.put_text_atomically(sums_path, format_sums({n: d for n, d in listed.items() if n not in replaced}))
    for upload in uploads:
        path = posixpath.join(directory, upload.name)
        if backend.holds(path, upload.source, upload.sha512):
            print(f"{upload.name}: already published, unchanged")
            continue
        if backend.stat(path) is not None:
            print(f"{upload.name}: the published file differs from this one: replacing it")
        backend.put_verified(upload.source, path, upload.sha512, f"upload {upload.name}")
    merged = {n: d for n, d in listed.items() if n not in replaced}
    merged.update(entries)
    kept = set(merged) - replaced
    _merge_sums(
        backend,
        posixpath.join(directory, SHA256_SUMS),
        kept,
        {u.name: sha256_file(u.source) for u in uploads if has_sha256(u.name)},
    )
    _merge_sums(
        backend,
        posixpath.join(directory, incus.FINGERPRINTS),
        kept,
        incus.fingerprints({u.name: u.source for u in uploads}),
    )
    sums = format_sums(merged)
    backend.put_text_atomically(sums_path, sums)  # after the files it lists
    signature_path = sums_path + signing.SIGNATURE_SUFFIX
    if signer:
        backend.put_text_atomically(signature_path, signer.sign_detached(sums.encode()).decode())
    else:
        # A signature of an older SHA512SUMS would fail anyone who checks it.
        backend.remove(signature_path)
    return entries


def _merge_sums(backend: Backend, path: str, kept: set[str], new: dict[str, str]) -> None:
    """Write a sums file listing new, and what it listed of the files kept; none when it lists nothing."""
    sums = {n: d for n, d in parse_sums(backend.read(path) or "").items() if n in kept}
    sums.update(new)
    if sums:
        backend.put_text_atomically(path, format_sums(sums))
    else:
        backend.remove(path)


def current_latest(backend: Backend, parent: str) -> str:
    return (backend.read(f"{parent}/{LATEST}") or "").strip()


def point_latest(backend: Backend, parent: str, version: Version) -> str:
    """Make parent's `latest` name version unless it names a newer one; what it names now."""
    current = current_latest(backend, parent)
    named = newest([current, str(version)]) or str(version)
    if named != current:
        backend.put_text_atomically(posixpath.join(parent, LATEST), named + "\n")
    return named


def expired_dailies(backend: Backend, release: str, keep: int, published: str | None = None) -> list[str]:
    """The dailies of release beyond the newest `keep`, oldest first: never the one `latest` names,
    nor published (the version a publication just made), nor a directory that is not a version."""
    parent = f"{release}/daily"
    spared = {current_latest(backend, parent), published}
    versions = ordered(backend.dirs(parent))
    return [v for v in versions[: max(len(versions) - keep, 0)] if v not in spared]


def delete_daily(backend: Backend, release: str, version: str) -> None:
    backend.remove_dir(daily_dir(release, version))


def prune_dailies(backend: Backend, release: str, keep: int, published: str | None = None) -> list[str]:
    """Delete all but the newest `keep` dailies of release (expired_dailies); the deleted versions."""
    doomed = expired_dailies(backend, release, keep, published)
    for version in doomed:
        delete_daily(backend, release, version)
    return doomed


# What a cell publishes besides its image files, manifest and SBOMs (made when it
# is published): the public name's suffix of each.
MANIFEST_SUFFIX = "json"
PROVENANCE_SUFFIX = "intoto.json"
CHANGES_SUFFIX = {fmt: f"changes.{fmt}" for fmt in ("json", "txt")}


def cell_uploads(files: CellFiles, manifest: Manifest) -> list[Upload]:
    """Everything a cell publishes, under its public name: the image files, the
    manifest, the SBOMs, the provenance envelope and the changes."""
    uploads = [Upload(files.artifact(a["format"]), a["name"], a["sha512"]) for a in manifest.artifacts]
    uploads += [Upload(files.sbom(s["format"]), s["name"], s["sha512"]) for s in manifest.sboms]
    made: list[tuple[Path, str]] = [
        (files.manifest, MANIFEST_SUFFIX),
        (files.provenance_envelope, PROVENANCE_SUFFIX),
        *((files.changes(fmt), suffix) for fmt, suffix in CHANGES_SUFFIX.items()),
    ]
    if incus.applies(files.cell):
        made.append((files.incus_metadata, incus.SUFFIX))
    uploads += [Upload(path, public_name(manifest.name, suffix), sha512_file(path)) for path, suffix in made]
    return uploads


def previous_version(backend: Backend, parent: str, cell: Cell, version: Version) -> tuple[str, dict] | None:
    """The newest version before `version` under parent that holds this cell: its manifest."""
    older = [v for v in ordered(backend.dirs(parent)) if Version.parse(v) < version]
    for candidate in reversed(older):
        path = posixpath.join(parent, candidate, public_name(cell.image_name(candidate), MANIFEST_SUFFIX))
        text = backend.read(path)
        if not text:
            continue
        try:
            found = json.loads(text)
        except ValueError:
            found = None
        # What changes are made from, in every schema a manifest had.
        if isinstance(found, dict) and isinstance(found.get("name"), str) and isinstance(found.get("packages"), list):
            return candidate, found
        print(f"warning: {backend.name}/{path} is not a manifest; changes are taken from an older version")
    return None


def prepare(cell: Cell, files: CellFiles, manifest: Manifest, backend: Backend, parent: str, signer) -> None:
    """Make what a publication adds: the changes since the cell's previous version
    under parent, the provenance statement in a DSSE envelope (signed when
    there is a signer), and a qcow2's Incus metadata (tasks/stages/incus.py)."""
    if incus.applies(cell):
        incus.write_tarball(files.incus_metadata, cell, manifest)
    new = changes.ImagePackages.of(manifest.name, manifest.version, manifest.packages, files.dpkg_status)
    previous = previous_version(backend, parent, cell, version_of(manifest, files.manifest))
    old = changes.ImagePackages.of(previous[1]["name"], previous[0], previous[1]["packages"]) if previous else None
    found = changes.compare(old, new, changes.read_changelogs(files.changelogs))
    atomic.write_json(files.changes("json"), found)
    with atomic.output(files.changes("txt")) as partial:
        partial.write_text(changes.render(found))
    payload = files.provenance.read_bytes()
    if not signing.envelope_holds(files.provenance_envelope, payload, signer):
        envelope = (signer or signing.Unsigned()).sign_envelope(payload, provenance.PAYLOAD_TYPE)
        atomic.write_json(files.provenance_envelope, envelope)


def publish(cell: Cell, files: CellFiles, location: Location, settings: PublishSettings) -> dict:
    """doit's publish stage: a cell as a daily build; write and return the receipt."""
    manifest = Manifest.read(files.manifest)
    version = version_of(manifest, files.manifest)
    release = cell.release.name
    backend = location.open(RetryPolicy(settings.retries, settings.retry_delay))
    directory = daily_dir(release, str(version))
    with signing.configured_signer() as signer, backend.locked(f"publishing {cell.name} {version}"):
        if signer is None:
            print(
                f"warning: no signing key ({signing.KEY_ENV}, {signing.FINGERPRINT_ENV}): "
                f"{directory}/{SUMS} and the provenance of {cell.name} are published unsigned"
            )
        prepare(cell, files, manifest, backend, f"{release}/daily", signer)
        uploads = cell_uploads(files, manifest)
        entries = publish_directory(backend, directory, uploads, signer)
        point_latest(backend, f"{release}/daily", version)
        pruned = prune_dailies(backend, release, settings.keep_dailies, published=str(version))
        from tasks.stages import catalogue  # it reads this module's layout

        catalogue.write(backend, signer, changed=(directory,))  # what the storage now holds, for tools and people
    if pruned:
        print(f"deleted older dailies of {release}: {', '.join(pruned)}")
    receipt = PublishReceipt(
        storage=location.url,
        directory=directory,
        files=entries,
        sizes={u.name: u.source.stat().st_size for u in uploads},
        signed_by=signer.fingerprint if signer else None,
    )
    atomic.write_json(files.published, receipt.to_json())
    return receipt.to_json()


def still_published(receipt_path: str, location_url: str) -> bool:
    """doit up-to-date check: the last publication went to this storage and, when it is
    a local directory, its files are all still there (remote storage is not asked:
    a no-op run makes no network requests)."""
    path = Path(receipt_path)
    if not path.exists():
        return False
    try:
        receipt = PublishReceipt.read(path)
    except RecordError:
        return False  # another version's receipt: publish again
    if receipt.storage != location_url:
        return False
    root = Location(location_url).local_root
    if root is None:
        return True
    directory = root / receipt.directory
    return all(
        (directory / name).is_file() and (directory / name).stat().st_size == size
        for name, size in receipt.sizes.items()
    )
