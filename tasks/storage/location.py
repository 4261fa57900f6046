"""Where images are published: a URL without credentials, and the backend that reaches it.

A URL's query may carry a token (some WebDAV servers take one there). It is
sent with every request and shown nowhere: ``url``, which every message,
task description and record uses, reads ``?token=<redacted>``, and the query
itself is kept apart (``query``), given only to the backend. User names and
passwords are refused in any URL: they come from the environment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from tasks.storage.backend import Backend, RetryPolicy

DEFAULT_RETRY = RetryPolicy()  # frozen: one instance serves every call

SCHEMES = ("file", "http", "https", "s3")
REDACTED = "<redacted>"


def redacted(url: str) -> str:
    """url as it may be shown: no user information, every query value and any fragment replaced."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    query = "&".join(f"{name}={REDACTED}" for name, _ in parse_qsl(parts.query, keep_blank_values=True))
    if parts.query and not query:
        query = REDACTED
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


@dataclass(frozen=True)
class Location:
    """Where images are published: url as shown and recorded; query, the secret part, apart."""

    url: str
    query: str = field(default="", repr=False, compare=False)

    @classmethod
    def parse(cls, text: str, base: Path, query_allowed: bool = True) -> Location:
        """A directory (absolute or relative to base) or a file://, http(s):// or s3:// URL.

        query_allowed: False where the text is kept in a file (matrix.yaml): a token there would be in git.
        """
        if "://" not in text:
            return cls((base / text).resolve().as_uri())
        parts = urlsplit(text)
        shown = redacted(text)
        if parts.scheme not in SCHEMES:
            raise ValueError(f"expected a directory or a {', '.join(s + '://' for s in SCHEMES)} URL, got {shown!r}")
        if parts.username or parts.password:
            raise ValueError(
                "credentials do not belong in a storage URL: give them through the environment "
                "(IMAGES_STORAGE_USER and IMAGES_STORAGE_PASSWORD, ~/.netrc, or AWS_* for s3://)"
            )
        if parts.fragment:
            raise ValueError(f"a storage URL has no #fragment, got {shown!r}")
        if parts.query and (parts.scheme not in ("http", "https") or not query_allowed):
            where = "a WebDAV URL given on the command line" if query_allowed else "the command line's storage="
            raise ValueError(f"a ?query (a token) belongs only in {where}, got {shown!r}")
        if parts.scheme == "file" and parts.netloc not in ("", "localhost"):
            raise ValueError(f"a file:// URL names a local directory, got {shown!r}")
        if parts.scheme == "s3" and not parts.netloc:
            raise ValueError(f"an s3:// URL names a bucket: s3://bucket/prefix, got {shown!r}")
        if parts.scheme == "file":
            return cls(Path(parts.path).as_uri())
        plain = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
        if not parts.query:
            return cls(plain)
        return cls(f"{plain}?{redacted(text).partition('?')[2]}", parts.query)

    def link(self, path: str) -> str:
        """Where path is in this storage, for people (a notification): without the query."""
        parts = urlsplit(self.url)
        return urlunsplit((parts.scheme, parts.netloc, f"{parts.path.rstrip('/')}/{path}", "", ""))

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme

    @property
    def local_root(self) -> Path | None:
        return Path(urlsplit(self.url).path) if self.scheme == "file" else None

    def open(self, retry: RetryPolicy = DEFAULT_RETRY) -> Backend:
        parts = urlsplit(self.url)
        if self.scheme == "file":
            from tasks.storage.local import LocalBackend

            backend: Backend = LocalBackend(Path(parts.path))
        elif self.scheme in ("http", "https"):
            from tasks.storage.webdav import WebDavBackend

            real = urlunsplit((parts.scheme, parts.netloc, parts.path, self.query, ""))
            backend = WebDavBackend(real, self.url if self.query else self.url + "/")
        else:
            from tasks.storage.s3 import S3Backend

            backend = S3Backend(parts.netloc, parts.path)
        backend.retry = retry
        return backend
