"""Where images are published: a URL without credentials, and the backend that reaches it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from tasks.storage.backend import Backend, RetryPolicy

SCHEMES = ("file", "http", "https", "s3")


@dataclass(frozen=True)
class Location:
    """Where images are published: a URL without credentials."""

    url: str

    @classmethod
    def parse(cls, text: str, base: Path) -> "Location":
        """A directory (absolute or relative to base) or a file://, http(s):// or s3:// URL."""
        if "://" not in text:
            return cls((base / text).resolve().as_uri())
        parts = urlsplit(text)
        if parts.scheme not in SCHEMES:
            raise ValueError(f"expected a directory or a {', '.join(s + '://' for s in SCHEMES)} URL, got {text!r}")
        if parts.username or parts.password:
            raise ValueError("credentials do not belong in a storage URL: give them through the environment "
                             "(IMAGES_STORAGE_USER and IMAGES_STORAGE_PASSWORD, ~/.netrc, or AWS_* for s3://)")
        if parts.scheme == "file" and parts.netloc not in ("", "localhost"):
            raise ValueError(f"a file:// URL names a local directory, got {text!r}")
        if parts.scheme == "s3" and not parts.netloc:
            raise ValueError(f"an s3:// URL names a bucket: s3://bucket/prefix, got {text!r}")
        return cls(text.rstrip("/") if parts.scheme != "file" else Path(parts.path).as_uri())

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme

    @property
    def local_root(self) -> Path | None:
        return Path(urlsplit(self.url).path) if self.scheme == "file" else None

    def open(self, retry: RetryPolicy = RetryPolicy()) -> Backend:
        parts = urlsplit(self.url)
        if self.scheme == "file":
            from tasks.storage.local import LocalBackend
            backend: Backend = LocalBackend(Path(parts.path))
        elif self.scheme in ("http", "https"):
            from tasks.storage.webdav import WebDavBackend
            backend = WebDavBackend(self.url)
        else:
            from tasks.storage.s3 import S3Backend
            backend = S3Backend(parts.netloc, parts.path)
        backend.retry = retry
        return backend
