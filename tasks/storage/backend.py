"""What every storage backend offers, and the upload discipline they share.

A backend stores files under paths relative to its root ("bookworm/daily/
20261125-1532/debian-12-nocloud-amd64-20261125-1532.tar.xz"). Uploads go to a
hidden temporary name, are read back and checked (size and SHA-512), and only
then moved to their name, so a reader never sees a half-written or damaged
file under a published name. Transient failures (connection errors, server
errors) are retried with exponential backoff; everything else fails at once
with a message that says what to do.
"""

from __future__ import annotations

import hashlib
import posixpath
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

from tasks.errors import StageFailed
from tasks.progress import StageProgress

T = TypeVar("T")
CHUNK = 4 << 20


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


class Backend:
    """Storage under one root. Subclasses implement the primitives below."""

    name: str  # the location, as shown to people: no credentials
    retry: RetryPolicy = RetryPolicy()

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

    # --- shared discipline ------------------------------------------------
    def digest(self, path: str) -> tuple[int, str]:
        """Size and SHA-512 of the stored file, read back from storage."""
        sha, size = hashlib.sha512(), 0

        def sink(chunk: bytes) -> None:
            nonlocal size
            sha.update(chunk)
            size += len(chunk)

        self.download(path, sink)
        return size, sha.hexdigest()

    def put_verified(self, local: Path, path: str, sha512: str, label: str) -> None:
        """Upload under a temporary name, check it, then move it to path."""
        directory, name = posixpath.split(path)
        temporary = posixpath.join(directory, f".{name}.upload-{secrets.token_hex(4)}")
        expected = local.stat().st_size
        try:
            def attempt() -> None:
                with StageProgress(label, total=expected) as progress:
                    self.upload(local, temporary, progress)

            self.retry.run(f"uploading {name} to {self.name}", attempt)
            size, digest = self.retry.run(f"reading back {name} from {self.name}", lambda: self.digest(temporary))
            if (size, digest) != (expected, sha512):
                raise PublishFailed(f"{name} in {self.name} differs from the local file after upload "
                                    f"({size} bytes, expected {expected}; SHA-512 {digest[:16]}…, expected "
                                    f"{sha512[:16]}…)")
            self.retry.run(f"moving {name} into place in {self.name}", lambda: self.move(temporary, path))
        except BaseException:
            try:
                self.delete(temporary)
            except Exception:  # noqa: BLE001 - the failure that got us here is the one to report
                pass
            raise

    def put_text_atomically(self, path: str, text: str) -> None:
        directory, name = posixpath.split(path)
        temporary = posixpath.join(directory, f".{name}.upload-{secrets.token_hex(4)}")
        data = text.encode()
        self.retry.run(f"writing {name} to {self.name}", lambda: self.put_bytes(temporary, data))
        self.retry.run(f"moving {name} into place in {self.name}", lambda: self.move(temporary, path))
