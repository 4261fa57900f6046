"""The publish stage: images into storage users can reach (a directory, WebDAV or S3).

Layout, as on cloud.debian.org::

    <release>/daily/<version>/<files>     scheduled and everyday builds (publish)
    <release>/daily/latest                the newest daily version (a one-line file)
    <release>/<version>/<files>           releases (tasks/release/step.py)
    <release>/latest                      the newest release version

Each cell publishes its image files, its manifest, its SBOMs, its provenance
(a DSSE envelope) and what changed since its previous version (changes.json,
changes.txt). Each version directory has a SHA512SUMS listing them all and,
when a signing key is configured (tasks/system/signing.py), its detached signature
SHA512SUMS.asc, written after it; a daily without a key is published unsigned
with a warning, a release refuses. Every file is uploaded under a
temporary name, read back and checked, then moved to its name; SHA512SUMS is
written after the files it lists, and `latest` after SHA512SUMS, so a reader
never finds a SHA512SUMS listing a file that is missing or different, nor a
`latest` naming an incomplete version. A file about to be replaced by
different content leaves SHA512SUMS first. A file whose published copy
already has the same checksum is not uploaded again. Older dailies beyond
publish.keep_dailies are deleted, never the one `latest` names.

Publications into one storage are serialised by a lock in the work
directory (two cells of a release share a SHA512SUMS).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tasks.model.layout import CellFiles
from tasks.model.matrix import Cell, PublishSettings
from tasks.model.records import Manifest, PublishReceipt, RecordError
from tasks.stages import changes, provenance
from tasks.stages.manifest import public_name
from tasks.storage import Backend, Location, RetryPolicy
from tasks.system import atomic, signing
from tasks.system.checksum import format_sums, parse_sums, sha512_file

SUMS = "SHA512SUMS"
LATEST = "latest"


def daily_dir(release: str, version: str) -> str:
    return f"{release}/daily/{version}"


def release_dir(release: str, version: str) -> str:
    return f"{release}/{version}"


@contextlib.contextmanager
def locked(lock_dir: Path, location: Location) -> Iterator[None]:
    lock_dir.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha256(location.url.encode()).hexdigest()[:16]
    with open(lock_dir / f"publish-{name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@dataclass(frozen=True)
class Upload:
    source: Path
    name: str
    sha512: str


def publish_directory(
    backend: Backend, directory: str, uploads: list[Upload], signer: signing.Signer | None = None
) -> dict[str, str]:
    """Put uploads into directory and list them in its SHA512SUMS (signed when
    there is a signer); return name -> digest."""
    sums_path = posixpath.join(directory, SUMS)
    listed = parse_sums(backend.retry.run(f"reading {sums_path}", lambda: backend.read_text(sums_path)) or "")
    entries = {u.name: u.sha512 for u in uploads}
    # A file about to be replaced leaves SHA512SUMS first: it never vouches for a different file.
    replaced = {name for name, digest in entries.items() if listed.get(name, digest) != digest}
    if replaced:
        backend.put_text_atomically(sums_path, format_sums({n: d for n, d in listed.items() if n not in replaced}))
    for upload in uploads:
        path = posixpath.join(directory, upload.name)
        if (
            listed.get(upload.name) == upload.sha512
            and backend.retry.run(f"checking {path}", functools.partial(backend.size, path))
            == upload.source.stat().st_size
        ):
            print(f"{upload.name}: already published, unchanged")
            continue
        backend.put_verified(upload.source, path, upload.sha512, f"upload {upload.name}")
    merged = {n: d for n, d in listed.items() if n not in replaced}
    merged.update(entries)
    sums = format_sums(merged)
    backend.put_text_atomically(sums_path, sums)  # after the files it lists
    signature_path = sums_path + signing.SIGNATURE_SUFFIX
    if signer:
        backend.put_text_atomically(signature_path, signer.sign_detached(sums.encode()).decode())
    else:
        # A signature of an older SHA512SUMS would fail anyone who checks it.
        backend.retry.run(f"deleting {signature_path}", functools.partial(backend.delete, signature_path))
    return entries


def point_latest(backend: Backend, parent: str, version: str) -> None:
    backend.put_text_atomically(posixpath.join(parent, LATEST), version + "\n")


def expired_dailies(backend: Backend, release: str, keep: int) -> list[str]:
    """The dailies of release beyond the newest `keep` (never the one `latest` names)."""
    parent = f"{release}/daily"
    latest = (backend.retry.run("reading latest", lambda: backend.read_text(f"{parent}/{LATEST}")) or "").strip()
    versions = backend.retry.run(f"listing {parent}", lambda: backend.list_dirs(parent))
    return [v for v in sorted(versions)[:-keep] if v != latest] if keep else []


def delete_daily(backend: Backend, release: str, version: str) -> None:
    directory = daily_dir(release, version)
    backend.retry.run(f"deleting {directory}", functools.partial(backend.delete_dir, directory))


def prune_dailies(backend: Backend, release: str, keep: int) -> list[str]:
    """Delete all but the newest `keep` dailies of release (never the one `latest` names)."""
    doomed = expired_dailies(backend, release, keep)
    for version in doomed:
        delete_daily(backend, release, version)
    return doomed


# What a cell publishes besides its image files, manifest and SBOMs (made when it
# is published): the public name's suffix of each.
PROVENANCE_SUFFIX = "intoto.json"
CHANGES_SUFFIX = {fmt: f"changes.{fmt}" for fmt in ("json", "txt")}


def cell_uploads(files: CellFiles, manifest: Manifest) -> list[Upload]:
    """Everything a cell publishes, under its public name: the image files, the
    manifest, the SBOMs, the provenance envelope and the changes."""
    uploads = [Upload(files.artifact(a["format"]), a["name"], a["sha512"]) for a in manifest.artifacts]
    uploads += [Upload(files.sbom(s["format"]), s["name"], s["sha512"]) for s in manifest.sboms]
    made = [
        (files.manifest, "json"),
        (files.provenance_envelope, PROVENANCE_SUFFIX),
        *((files.changes(fmt), suffix) for fmt, suffix in CHANGES_SUFFIX.items()),
    ]
    uploads += [Upload(path, public_name(manifest.name, suffix), sha512_file(path)) for path, suffix in made]
    return uploads


def previous_version(backend: Backend, parent: str, cell: Cell, version: str) -> tuple[str, dict] | None:
    """The newest version before `version` under parent that holds this cell: its manifest."""
    versions = backend.retry.run(f"listing {parent}", lambda: backend.list_dirs(parent))
    for candidate in sorted((v for v in versions if v < version and v != "daily"), reverse=True):
        path = posixpath.join(parent, candidate, public_name(cell.image_name(candidate), "json"))
        text = backend.retry.run(f"reading {path}", functools.partial(backend.read_text, path))
        if text:
            return candidate, json.loads(text)
    return None


def prepare(cell: Cell, files: CellFiles, manifest: Manifest, backend: Backend, parent: str, signer) -> None:
    """Make what a publication adds: the changes since the cell's previous version
    under parent, and the provenance statement in a DSSE envelope (signed when
    there is a signer)."""
    new = changes.ImagePackages.of(manifest.name, manifest.version, manifest.packages, files.dpkg_status)
    previous = previous_version(backend, parent, cell, manifest.version)
    old = changes.ImagePackages.of(previous[1]["name"], previous[0], previous[1]["packages"]) if previous else None
    found = changes.compare(old, new, changes.read_changelogs(files.changelogs))
    atomic.write_json(files.changes("json"), found)
    with atomic.output(files.changes("txt")) as partial:
        partial.write_text(changes.render(found))
    payload = files.provenance.read_bytes()
    if not signing.envelope_holds(files.provenance_envelope, payload, signer):
        envelope = (signer or signing.Unsigned()).sign_envelope(payload, provenance.PAYLOAD_TYPE)
        atomic.write_json(files.provenance_envelope, envelope)


def publish(cell: Cell, files: CellFiles, location: Location, settings: PublishSettings, lock_dir: Path) -> dict:
    """doit's publish stage: a cell as a daily build; write and return the receipt."""
    manifest = Manifest.read(files.manifest)
    release, version = cell.release.name, manifest.version
    backend = location.open(RetryPolicy(settings.retries, settings.retry_delay))
    directory = daily_dir(release, version)
    with signing.configured_signer() as signer, locked(lock_dir, location):
        if signer is None:
            print(
                f"warning: no signing key ({signing.KEY_ENV}, {signing.FINGERPRINT_ENV}): "
                f"{directory}/{SUMS} and the provenance of {cell.name} are published unsigned"
            )
        prepare(cell, files, manifest, backend, f"{release}/daily", signer)
        uploads = cell_uploads(files, manifest)
        entries = publish_directory(backend, directory, uploads, signer)
        point_latest(backend, f"{release}/daily", max(version, current_latest(backend, f"{release}/daily")))
        pruned = prune_dailies(backend, release, settings.keep_dailies)
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


def current_latest(backend: Backend, parent: str) -> str:
    return (backend.retry.run("reading latest", lambda: backend.read_text(f"{parent}/{LATEST}")) or "").strip()


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
