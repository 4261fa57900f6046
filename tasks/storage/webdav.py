"""Storage on a WebDAV server (http:// and https:// URLs): PUT, MOVE, MKCOL,
DELETE and PROPFIND through requests; the storage lock is WebDAV's LOCK.

Credentials come from IMAGES_STORAGE_USER and IMAGES_STORAGE_PASSWORD, or from
~/.netrc (which requests reads by itself); never from matrix.yaml, and they
appear in no message. A URL's query (a token some servers take there) is sent
with every request and shown as <redacted> (tasks/storage/location.py).

The storage lock is an exclusive write lock (RFC 4918, a class 2 server) on
<root>/.lock: the server lets one client hold it, expires it when its holder
stops renewing it, and answers 423 Locked to the others, which wait. nginx
needs its dav_ext module with `dav_ext_lock_zone` and `dav_ext_lock`.
"""

from __future__ import annotations

import os
import posixpath
import random
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit
from xml.sax.saxutils import escape

import requests

from tasks.progress import StageProgress
from tasks.storage.backend import (
    CHUNK,
    LOCK_NAME,
    Backend,
    Holder,
    Lease,
    LockLost,
    PublishFailed,
    Transient,
    wait_announced,
)
from tasks.system import http

TIMEOUT = (10, 300)  # connect, read
_DAV = "{DAV:}"


class _Counted:
    """A file for requests to send with its length, counting what it sent."""

    def __init__(self, file, progress: StageProgress):
        self.file, self.progress = file, progress
        self.len = os.fstat(file.fileno()).st_size  # requests sends Content-Length from this

    def read(self, size: int = -1) -> bytes:
        chunk = self.file.read(CHUNK if size is None or size < 0 else size)
        self.progress.update(advance=len(chunk))
        return chunk


class WebDavBackend(Backend):
    def __init__(self, url: str, name: str):
        parts = urlsplit(url)
        self._scheme, self._netloc, self._query = parts.scheme, parts.netloc, parts.query
        self._root = parts.path.rstrip("/") + "/"
        self.name = name  # the URL as shown: its query redacted
        self.session = self._new_session()

    @staticmethod
    def _new_session() -> requests.Session:
        session = http.Session()  # the credentials stay with the storage when it redirects
        session.headers["User-Agent"] = "debian-image-matrix"
        user, password = os.environ.get("IMAGES_STORAGE_USER"), os.environ.get("IMAGES_STORAGE_PASSWORD")
        if user:
            session.auth = (user, password or "")
        return session

    def _url(self, path: str, query: bool = True) -> str:
        return urlunsplit((self._scheme, self._netloc, self._root + quote(path), self._query if query else "", ""))

    def _request(
        self, method: str, path: str, ok: tuple[int, ...], session: requests.Session | None = None, **kwargs
    ) -> requests.Response:
        what = f"{method} {path or '/'}"
        try:
            response = (session or self.session).request(method, self._url(path), timeout=TIMEOUT, **kwargs)
        except (requests.ConnectionError, requests.Timeout) as error:
            raise Transient(f"{what}: {type(error).__name__}") from None
        if response.status_code in ok:
            return response
        reason = f"{what}: HTTP {response.status_code} {response.reason}"
        if response.status_code in (401, 403):
            raise PublishFailed(
                f"{self.name} refused the credentials ({reason}); set IMAGES_STORAGE_USER and "
                f"IMAGES_STORAGE_PASSWORD, or ~/.netrc"
            )
        if response.status_code == 507:
            raise PublishFailed(f"{self.name} is out of space ({reason})")
        if response.status_code >= 500 or response.status_code == 408:
            raise Transient(reason)
        raise PublishFailed(f"{self.name}: {reason}")

    def size(self, path: str) -> int | None:
        response = self._request("HEAD", path, (200, 404))
        return int(response.headers.get("Content-Length", 0)) if response.status_code == 200 else None

    def read_text(self, path: str) -> str | None:
        response = self._request("GET", path, (200, 404))
        return response.text if response.status_code == 200 else None

    def _make_dirs(self, path: str) -> None:
        parts = [p for p in posixpath.dirname(path).split("/") if p]
        for i in range(1, len(parts) + 1):
            self._request("MKCOL", "/".join(parts[:i]) + "/", (201, 405))  # 405: it exists

    def upload(self, local: Path, path: str, progress: StageProgress) -> None:
        self._make_dirs(path)
        with open(local, "rb") as f:
            self._request("PUT", path, (200, 201, 204), data=_Counted(f, progress))

    def put_bytes(self, path: str, data: bytes) -> None:
        self._make_dirs(path)
        self._request("PUT", path, (200, 201, 204), data=data)

    def download(self, path: str, sink: Callable[[bytes], None]) -> None:
        response = self._request("GET", path, (200,), stream=True)
        with response:
            try:
                for chunk in response.iter_content(CHUNK):
                    sink(chunk)
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as error:
                raise Transient(f"GET {path}: {type(error).__name__}") from None

    def move(self, source: str, target: str) -> None:
        destination = self._url(target, query=False)
        self._request("MOVE", source, (201, 204), headers={"Destination": destination, "Overwrite": "T"})

    def delete(self, path: str) -> None:
        self._request("DELETE", path, (200, 204, 404))

    def delete_dir(self, path: str) -> None:
        self._request("DELETE", path.rstrip("/") + "/", (200, 204, 404))

    def list_dirs(self, path: str) -> list[str]:
        directory = path.rstrip("/") + "/"
        response = self._request("PROPFIND", directory, (207, 404), headers={"Depth": "1"})
        if response.status_code == 404:
            return []
        own = self._root + quote(directory)
        names = []
        for item in ElementTree.fromstring(response.content).iter(f"{_DAV}response"):
            href = unquote(urlsplit(item.findtext(f"{_DAV}href") or "").path)
            if href.endswith("/") and href.rstrip("/") != own.rstrip("/"):
                name = href.rstrip("/").rsplit("/", 1)[-1]
                if not name.startswith("."):
                    names.append(name)
        return sorted(names)

    # --- the storage lock -------------------------------------------------
    def acquire(self, holder: Holder) -> Lease:
        owner = escape(holder.to_bytes().decode())
        body = (
            '<?xml version="1.0" encoding="utf-8"?><D:lockinfo xmlns:D="DAV:">'
            "<D:lockscope><D:exclusive/></D:lockscope><D:locktype><D:write/></D:locktype>"
            f"<D:owner>{owner}</D:owner></D:lockinfo>"
        )
        timeout = {"Timeout": f"Second-{int(self.lease_seconds)}"}
        # The storage's own collection first: nginx keeps a lock it could not make the file of (409) until it expires.
        self.retry.run(f"making {self.name}", lambda: self._request("MKCOL", "", (201, 405)))
        announced = False
        while True:
            response = self._request(
                "LOCK", LOCK_NAME, (200, 201, 405, 423, 501), data=body, headers={"Depth": "0", **timeout}
            )
            if response.status_code in (405, 501):
                raise PublishFailed(
                    f"{self.name} does not take WebDAV's LOCK (HTTP {response.status_code}): writers to one storage "
                    "need it so that none loses another's entries (nginx: dav_ext_lock_zone and dav_ext_lock)"
                )
            if response.status_code in (200, 201):
                break
            if not announced:
                wait_announced(self.name, "another writer")  # 423: the server names no holder
                announced = True
            time.sleep(random.uniform(0.1, 0.4))
        token = response.headers.get("Lock-Token", "").strip()
        if not token:
            raise PublishFailed(f"{self.name}: LOCK {LOCK_NAME} answered without a lock token")

        renewing = self._new_session()  # the lease is renewed from a thread of its own

        def renew() -> None:
            # A failure here is tried again at the next renewal, until the lease runs out.
            refreshed = self._request(
                "LOCK", LOCK_NAME, (200, 412, 423), session=renewing, headers={"If": f"({token})", **timeout}
            )
            if refreshed.status_code != 200:
                raise LockLost(f"the server refused to renew it: HTTP {refreshed.status_code}")

        def release() -> None:
            self._request("UNLOCK", LOCK_NAME, (200, 204, 409, 412), headers={"Lock-Token": token})

        return Lease(self.name, renew, release, self.lease_seconds)
