"""Storage on a WebDAV server (http:// and https:// URLs): PUT, MOVE, MKCOL,
DELETE and PROPFIND through requests.

Credentials come from IMAGES_STORAGE_USER and IMAGES_STORAGE_PASSWORD, or from
~/.netrc (which requests reads by itself); never from matrix.yaml, and they
appear in no message.
"""

from __future__ import annotations

import os
import posixpath
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Callable
from urllib.parse import quote, unquote, urlsplit

import requests

from tasks.progress import StageProgress
from tasks.storage.backend import CHUNK, Backend, PublishFailed, Transient

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
    def __init__(self, url: str):
        self.base = url.rstrip("/") + "/"
        self.name = self.base
        self.session = requests.Session()
        self.session.headers["User-Agent"] = "debian-image-matrix"
        user, password = os.environ.get("IMAGES_STORAGE_USER"), os.environ.get("IMAGES_STORAGE_PASSWORD")
        if user:
            self.session.auth = (user, password or "")

    def _url(self, path: str) -> str:
        return self.base + quote(path)

    def _request(self, method: str, path: str, ok: tuple[int, ...], **kwargs) -> requests.Response:
        what = f"{method} {path}"
        try:
            response = self.session.request(method, self._url(path), timeout=TIMEOUT, **kwargs)
        except (requests.ConnectionError, requests.Timeout) as error:
            raise Transient(f"{what}: {type(error).__name__}") from None
        if response.status_code in ok:
            return response
        reason = f"{what}: HTTP {response.status_code} {response.reason}"
        if response.status_code in (401, 403):
            raise PublishFailed(f"{self.name} refused the credentials ({reason}); set IMAGES_STORAGE_USER and "
                                f"IMAGES_STORAGE_PASSWORD, or ~/.netrc")
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
        self._request("MOVE", source, (201, 204), headers={"Destination": self._url(target), "Overwrite": "T"})

    def delete(self, path: str) -> None:
        self._request("DELETE", path, (200, 204, 404))

    def delete_dir(self, path: str) -> None:
        self._request("DELETE", path.rstrip("/") + "/", (200, 204, 404))

    def list_dirs(self, path: str) -> list[str]:
        directory = path.rstrip("/") + "/"
        response = self._request("PROPFIND", directory, (207, 404), headers={"Depth": "1"})
        if response.status_code == 404:
            return []
        own = urlsplit(self._url(directory)).path
        names = []
        for item in ElementTree.fromstring(response.content).iter(f"{_DAV}response"):
            href = unquote(urlsplit(item.findtext(f"{_DAV}href") or "").path)
            if href.endswith("/") and href.rstrip("/") != own.rstrip("/"):
                name = href.rstrip("/").rsplit("/", 1)[-1]
                if not name.startswith("."):
                    names.append(name)
        return sorted(names)
