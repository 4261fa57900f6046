"""What every storage backend offers, and the discipline they share.

A backend stores files under paths relative to its root ("bookworm/daily/
20261125-1532/debian-12-nocloud-amd64-20261125-1532.tar.xz").

- **Uploads are checked before they carry their name.** A file goes to a
  hidden temporary name, is read back and checked (size and SHA-512), and
  only then is moved to its name; S3, whose objects appear only complete,
  checks what it receives against the checksum it is sent instead
  (tasks/storage/s3.py). A reader never sees a half-written or damaged file
  under a published name.
- **What storage holds is compared, not assumed** (``holds``): a file
  published before counts only when its bytes are the ones meant, read back
  or, where the storage keeps a checksum of its own, by that checksum.
- **One writer at a time** (``locked``): the storage's lock, held in the
  storage itself, so that writers from different machines or work
  directories do not lose each other's entries in the files they share
  (SHA512SUMS, ``latest``). Each backend takes it with what its protocol
  offers: flock in a directory, WebDAV's LOCK, S3's conditional writes. A
  remote lock is a lease, renewed while it is held; a writer that lost it
  (its renewals failed for a whole lease) stops before its next write.
- Transient failures (connection errors, server errors) are retried with
  exponential backoff; everything else fails at once with a message that
  says what to do.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from tasks.errors import StageFailed
from tasks.progress import StageProgress

T = TypeVar("T")
CHUNK = 4 << 20
LOCK_NAME = ".lock"  # the storage lock, at the storage's root
LEASE_SECONDS = 60.0  # a remote lock not renewed for this long is taken to be a dead writer's


class PublishFailed(StageFailed):
    pass


class Transient(Exception):
    """A failure worth another attempt (a dropped connection, a 5xx answer)."""


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    delay: float = 1.0  # seconds before the second attempt; doubled each time

    def run(self, what: str, action: Callable[[], T]) -> T:
        for attempt in range(1, self.attempts + 1):
            try:
                return action()
            except Transient as error:
                if attempt == self.attempts:
                    raise PublishFailed(f"{what}: {error} (gave up after {self.attempts} attempts)") from None
                time.sleep(self.delay * 2 ** (attempt - 1))
        raise AssertionError("unreachable")


@dataclass(frozen=True)
class Holder:
    """Who holds a storage lock: what a waiting writer is told."""

    host: str
    pid: int
    purpose: str
    since: str
    nonce: str = field(default_factory=lambda: secrets.token_hex(8))  # two holders never write the same bytes

    @classmethod
    def me(cls, purpose: str) -> Holder:
        return cls(socket.gethostname(), os.getpid(), purpose, datetime.now(UTC).isoformat(timespec="seconds"))

    def to_bytes(self, **extra: object) -> bytes:
        return json.dumps({**asdict(self), **extra}).encode()

    @staticmethod
    def describe(data: bytes | str | None) -> str:
        """Who a lock's content names, for the waiting writer."""
        try:
            holder = json.loads(data or b"")
            return f"{holder['purpose']} (pid {holder['pid']} on {holder['host']}, since {holder['since']})"
        except (ValueError, TypeError, KeyError):
            return "another writer"


class Lease:
    """A held storage lock. A remote one renews itself every quarter lease in
    the background; ``check`` raises once it is lost."""

    def __init__(self, name: str, renew: Callable[[], None] | None, release: Callable[[], None], lease: float):
        self.name, self._renew, self._release, self.lease = name, renew, release, lease
        self.lost: str | None = None
        self._renewed = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if renew is not None:
            self._thread = threading.Thread(target=self._keep, name="storage-lease", daemon=True)
            self._thread.start()

    def _keep(self) -> None:
        while not self._stop.wait(self.lease / 4):
            try:
                assert self._renew is not None
                self._renew()
                self._renewed = time.monotonic()
            except LockLost as error:
                self.lost = str(error)
                return
            except Exception as error:  # noqa: BLE001 - a renewal that failed is tried again; check() judges
                if time.monotonic() - self._renewed > self.lease:
                    self.lost = f"not renewed for {self.lease:.0f} s ({error})"
                    return

    def check(self) -> None:
        if self.lost is None and self._thread and time.monotonic() - self._renewed > self.lease:
            self.lost = f"not renewed for {self.lease:.0f} s"
        if self.lost is not None:
            raise PublishFailed(
                f"{self.name}: lost the storage lock ({self.lost}); another writer may hold it now. "
                "Nothing more was written: run again"
            )

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        if self.lost is None:
            with contextlib.suppress(Exception):  # a lock that outlives us expires with its lease
                self._release()


class LockLost(Exception):
    pass


class Backend:
    """Storage under one root. Subclasses implement the primitives below."""

    name: str  # the location, as shown to people: no credentials
    retry: RetryPolicy = RetryPolicy()
    lease_seconds: float = LEASE_SECONDS
    _lease: Lease | None = None

    # --- primitives -------------------------------------------------------
    def size(self, path: str) -> int | None:
        """The size of the file at path, or None when there is none."""
        raise NotImplementedError

    def read_text(self, path: str) -> str | None:
        raise NotImplementedError

    def upload(self, local: Path, path: str, progress: StageProgress) -> None:
        """Store local's bytes at path (no atomicity needed: path is a temporary name)."""
        raise NotImplementedError

    def put_bytes(self, path: str, data: bytes) -> None:
        raise NotImplementedError

    def download(self, path: str, sink: Callable[[bytes], None]) -> None:
        raise NotImplementedError

    def move(self, source: str, target: str) -> None:
        """Rename source to target, replacing target."""
        raise NotImplementedError

    def delete(self, path: str) -> None:
        raise NotImplementedError

    def delete_dir(self, path: str) -> None:
        raise NotImplementedError

    def list_dirs(self, path: str) -> list[str]:
        """Names of the directories directly under path."""
        raise NotImplementedError

    def acquire(self, holder: Holder) -> Lease:
        """Take the storage lock for holder, waiting while another writer holds it."""
        raise NotImplementedError

    # --- reading, retried ---------------------------------------------------
    def read(self, path: str) -> str | None:
        return self.retry.run(f"reading {path} from {self.name}", lambda: self.read_text(path))

    def stat(self, path: str) -> int | None:
        return self.retry.run(f"checking {path} in {self.name}", lambda: self.size(path))

    def dirs(self, path: str) -> list[str]:
        return self.retry.run(f"listing {path or '/'} in {self.name}", lambda: self.list_dirs(path))

    def read_back(self, path: str) -> tuple[int, str]:
        """Size and SHA-512 of the stored file, read back from storage (retried)."""

        def digest() -> tuple[int, str]:
            sha, size = hashlib.sha512(), 0

            def sink(chunk: bytes) -> None:
                nonlocal size
                sha.update(chunk)
                size += len(chunk)

            self.download(path, sink)
            return size, sha.hexdigest()

        return self.retry.run(f"reading back {path} from {self.name}", digest)

    def holds(self, path: str, local: Path, sha512: str) -> bool:
        """Whether the file at path is local's bytes (whose SHA-512 is sha512): read back and compared."""
        size = local.stat().st_size
        return self.stat(path) == size and self.read_back(path) == (size, sha512)

    # --- writing: under the lock, checked ----------------------------------
    @contextlib.contextmanager
    def locked(self, purpose: str) -> Iterator[None]:
        """Hold the storage lock for the writes inside (purpose: what they are, for waiting writers)."""
        if self._lease is not None:
            yield  # held already, by this process
            return
        lease = self.acquire(Holder.me(purpose))
        self._lease = lease
        try:
            yield
        finally:
            self._lease = None
            lease.release()

    def _check_lock(self) -> None:
        if self._lease is not None:
            self._lease.check()

    def put_verified(self, local: Path, path: str, sha512: str, label: str) -> None:
        """Upload under a temporary name, check it, then move it to path."""
        self._check_lock()
        directory, name = posixpath.split(path)
        temporary = posixpath.join(directory, f".{name}.upload-{secrets.token_hex(4)}")
        expected = local.stat().st_size
        try:

            def attempt() -> None:
                with StageProgress(label, total=expected) as progress:
                    self.upload(local, temporary, progress)

            self.retry.run(f"uploading {name} to {self.name}", attempt)
            size, digest = self.read_back(temporary)
            if (size, digest) != (expected, sha512):
                raise PublishFailed(
                    f"{name} in {self.name} differs from the local file after upload "
                    f"({size} bytes, expected {expected}; SHA-512 {digest[:16]}…, expected "
                    f"{sha512[:16]}…)"
                )
            self._check_lock()
            self.retry.run(f"moving {name} into place in {self.name}", lambda: self.move(temporary, path))
        except BaseException:
            try:
                self.delete(temporary)
            except Exception:  # noqa: BLE001 - the failure that got us here is the one to report
                pass
            raise

    def put_text_atomically(self, path: str, text: str) -> None:
        self._check_lock()
        directory, name = posixpath.split(path)
        temporary = posixpath.join(directory, f".{name}.upload-{secrets.token_hex(4)}")
        data = text.encode()
        self.retry.run(f"writing {name} to {self.name}", lambda: self.put_bytes(temporary, data))
        self.retry.run(f"moving {name} into place in {self.name}", lambda: self.move(temporary, path))

    def remove(self, path: str) -> None:
        self._check_lock()
        self.retry.run(f"deleting {path} from {self.name}", lambda: self.delete(path))

    def remove_dir(self, path: str) -> None:
        self._check_lock()
        self.retry.run(f"deleting {path} from {self.name}", lambda: self.delete_dir(path))


def wait_announced(name: str, who: str) -> None:
    """The one line a writer prints when it has to wait for the storage lock."""
    print(f"{name}: waiting for the storage lock, held by {who}", flush=True)
