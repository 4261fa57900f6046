"""Publishing: artifacts and manifest into storage, <release>/<version>/<file>.

Every file is copied under a temporary name, checked against the manifest's
SHA-512 and renamed into place; the version directory's SHA512SUMS is
rewritten last, under a lock because several cells of one release publish
into the same directory. A reader therefore never finds a SHA512SUMS that
lists a missing or different file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

from . import atomic
from .checksum import CHUNK, format_sums, parse_sums, sha512_file
from .errors import StageFailed
from .layout import CellFiles
from .manifest import public_name
from .matrix import Cell
from .progress import StageProgress

SUMS = "SHA512SUMS"


class PublishFailed(StageFailed):
    pass


@dataclass(frozen=True)
class LocalStorage:
    root: Path

    @classmethod
    def from_location(cls, location: str, base: Path) -> "LocalStorage":
        """A directory: a file:// URL, an absolute path, or a path relative to base."""
        if "://" in location:
            url = urlparse(location)
            if url.scheme != "file" or url.netloc not in ("", "localhost"):
                raise ValueError(f"expected a directory or a file:// URL, got {location!r}")
            return cls(Path(url.path))
        return cls((base / location).resolve())

    @property
    def url(self) -> str:
        return self.root.as_uri()

    def version_dir(self, release: str, version: str) -> Path:
        return self.root / release / version

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # One lock for the whole storage, kept out of the published directories.
        with open(self.root / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def put(self, source: Path, directory: Path, name: str, sha512: str, label: str) -> bool:
        """Copy source to directory/name unless an identical file is there. True if copied."""
        target = directory / name
        if target.is_file() and target.stat().st_size == source.stat().st_size:
            if sha512_file(target) == sha512:
                return False
        with atomic.output(target) as partial, StageProgress(label, total=source.stat().st_size) as progress:
            digest = hashlib.sha512()
            with open(source, "rb") as src, open(partial, "wb") as dst:
                while chunk := src.read(CHUNK):
                    dst.write(chunk)
                    digest.update(chunk)
                    progress.update(advance=len(chunk))
            if digest.hexdigest() != sha512:
                raise PublishFailed(f"{source} changed since its manifest was written (SHA-512 differs)")
            os.chmod(partial, 0o644)
        return True

    def sums(self, directory: Path) -> dict[str, str]:
        path = directory / SUMS
        return parse_sums(path.read_text()) if path.exists() else {}

    def update_sums(self, directory: Path, add: dict[str, str], remove: set[str] = frozenset()) -> None:
        with self._locked():
            sums = self.sums(directory)
            for name in remove:
                sums.pop(name, None)
            sums.update(add)
            atomic.write_text(directory / SUMS, format_sums(sums))
            os.chmod(directory / SUMS, 0o644)

    def missing(self, receipt: dict) -> list[str]:
        """Files a publication receipt lists that storage no longer has."""
        directory = self.root / receipt["directory"]
        return [name for name, size in receipt["sizes"].items()
                if not (directory / name).is_file() or (directory / name).stat().st_size != size]


def publish(cell: Cell, files: CellFiles, storage: LocalStorage) -> dict:
    """Publish one cell's artifacts and manifest; write and return the receipt."""
    manifest = atomic.read_json(files.manifest)
    release, version, image = cell.release.name, manifest["version"], manifest["name"]
    directory = storage.version_dir(release, version)
    directory.mkdir(parents=True, exist_ok=True)

    manifest_name = public_name(image, "json")
    uploads = [(files.artifact(a["format"]), a["name"], a["sha512"]) for a in manifest["artifacts"]]
    uploads.append((files.manifest, manifest_name, sha512_file(files.manifest)))
    entries = {name: digest for _, name, digest in uploads}
    sizes = {name: source.stat().st_size for source, name, _ in uploads}

    # A file about to be replaced by different content leaves SHA512SUMS
    # first, so that SHA512SUMS never vouches for a file that differs.
    listed = storage.sums(directory)
    replaced = {name for name, digest in entries.items() if listed.get(name, digest) != digest}
    if replaced:
        storage.update_sums(directory, {}, replaced)
    for source, name, digest in uploads:
        storage.put(source, directory, name, digest, f"publish {name}")
    storage.update_sums(directory, entries)  # last: it vouches for the files above

    receipt = {
        "storage": storage.url,
        "directory": f"{release}/{version}",
        "files": entries,
        "sizes": sizes,
    }
    atomic.write_json(files.published, receipt)
    return receipt


def still_published(receipt_path: str, storage_root: str) -> bool:
    """doit up-to-date check: the last publication is still complete in storage."""
    path = Path(receipt_path)
    if not path.exists():
        return False
    receipt = atomic.read_json(path)
    storage = LocalStorage(Path(storage_root))
    return receipt.get("storage") == storage.url and not storage.missing(receipt)
