"""A caching HTTP proxy for the Debian archive, on loopback, during a build.

apt and debootstrap inside a build fetch through it (Acquire::http::Proxy,
http_proxy). Files under /pool/ never change once published (their name
carries the version), so they are kept in a cache directory shared by all
builds and served from there next time; indexes (InRelease, Packages) always
come from the mirror. apt still checks every package against the signed
indexes, so a damaged cache file fails the build instead of entering an
image. Each file is written under a temporary name and renamed, so builds
running side by side never read half a file.

Only http:// mirrors are cached; an https:// mirror is reached directly.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import requests

CHUNK = 1 << 20
# How long closing the cache waits for requests still being answered.
CLOSE_GRACE_SECONDS = 10
# Hop-by-hop headers are not forwarded (RFC 9110, 7.6.1).
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-connection",
}
_FORWARDED_REQUEST_HEADERS = {"range", "if-modified-since", "if-none-match", "if-range", "user-agent", "accept"}


@dataclass
class Stats:
    hits: int = 0
    misses: int = 0
    passed: int = 0  # not cacheable: indexes and the like
    bytes_from_cache: int = 0
    errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"package cache: {self.hits} packages from the cache ({self.bytes_from_cache / 2**20:.0f} MiB), "
            f"{self.misses} fetched and kept, {self.passed} other requests passed through"
            + (f", {len(self.errors)} errors" if self.errors else "")
        )


def cacheable(url: str) -> bool:
    path = urlsplit(url).path
    return "/pool/" in path and path.endswith((".deb", ".udeb"))


# What no build has used for this many days is dropped from the caches builds share.
UNUSED_DAYS = 30


class PackageCache:
    """The proxy, as a context manager: `with PackageCache(dir) as cache: cache.url`."""

    def __init__(self, directory: Path, max_age_days: int = UNUSED_DAYS):
        self.directory = directory
        self.max_age_days = max_age_days
        self.stats = Stats()
        self._server: ThreadingHTTPServer | None = None
        # Requests being answered: closing waits for them, so the stats and
        # the cache hold every request a client has seen answered.
        self._busy = 0
        self._idle = threading.Condition()
        # Imported here: every doit run loads this module, only builds need requests.
        import requests

        self._session = requests.Session()
        # Relay bytes exactly as the mirror stores them.
        self._session.headers["Accept-Encoding"] = "identity"

    @property
    def server(self) -> ThreadingHTTPServer:
        if self._server is None:
            raise RuntimeError("the package cache serves only inside its with block")
        return self._server

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        assert isinstance(host, str)  # an IPv4 server's address
        return f"http://{host}:{port}"

    def __enter__(self) -> PackageCache:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._prune()
        cache = self

        class Handler(_ProxyHandler):
            owner = cache

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="package-cache", daemon=True).start()
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self.server.shutdown()
        if not (kind and issubclass(kind, KeyboardInterrupt)):
            # Requests in flight end first (each fills the cache); an
            # interrupted build does not wait for them: its cleanup (loop
            # devices, mounts) must finish before the run gives up on it.
            with self._idle:
                self._idle.wait_for(lambda: self._busy == 0, timeout=CLOSE_GRACE_SECONDS)
        self.server.server_close()
        self._session.close()

    def _prune(self) -> None:
        """Drop packages no build has used for max_age_days (a hit refreshes mtime)."""
        limit = time.time() - self.max_age_days * 86400
        for path in self.directory.iterdir():
            try:
                if path.name.startswith(".") and path.stat().st_mtime < time.time() - 3600:
                    path.unlink()  # a partial file left by a killed build
                elif path.stat().st_mtime < limit:
                    path.unlink()
            except FileNotFoundError:
                pass

    def cached(self, url: str) -> Path:
        return self.directory / Path(urlsplit(url).path).name


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, which apt uses
    owner: PackageCache

    def log_message(self, format, *args) -> None:  # noqa: A002 - quiet: the build log has apt's own lines
        pass

    def do_GET(self) -> None:  # noqa: N802
        idle = self.owner._idle
        with idle:
            self.owner._busy += 1
        try:
            self._serve()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # apt went away; nothing to tell it
        finally:
            with idle:
                self.owner._busy -= 1
                idle.notify_all()

    def _serve(self) -> None:
        url = self.path
        if not url.startswith("http://"):
            self.send_error(400, "this proxy takes absolute http:// URLs")
            return
        if cacheable(url):
            path = self.owner.cached(url)
            if path.is_file():
                self._send_file(path)
                return
            self._fetch(url, keep=path)
        else:
            self._fetch(url, keep=None)

    def do_HEAD(self) -> None:  # noqa: N802
        self.do_GET()

    def _send_file(self, path: Path) -> None:
        stats = self.owner.stats
        size = path.stat().st_size
        os.utime(path)  # used now: kept by _prune
        self.send_response(200)
        self.send_header("Content-Length", str(size))
        self.send_header("Content-Type", "application/vnd.debian.binary-package")
        self.end_headers()
        if self.command != "HEAD":
            with open(path, "rb") as f:
                shutil.copyfileobj(f, self.wfile, CHUNK)
        stats.hits += 1
        stats.bytes_from_cache += size

    def _fetch(self, url: str, keep: Path | None) -> None:
        stats = self.owner.stats
        headers = {k: v for k, v in self.headers.items() if k.lower() in _FORWARDED_REQUEST_HEADERS}
        if keep is not None:
            headers.pop("Range", None)  # a package to keep is fetched whole
        import requests

        try:
            upstream = self.owner._session.request(self.command, url, headers=headers, stream=True, timeout=60)
        except requests.RequestException as error:
            stats.errors.append(f"{url}: {error}")
            self.send_error(502, f"mirror unreachable: {error}")
            return
        with upstream:
            self.send_response(upstream.status_code)
            for name, value in upstream.headers.items():
                if name.lower() not in _HOP_BY_HOP:
                    self.send_header(name, value)
            if "Content-Length" not in upstream.headers:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if self.command == "HEAD":
                return
            if keep is None or upstream.status_code != 200:
                for chunk in upstream.raw.stream(CHUNK, decode_content=False):
                    self.wfile.write(chunk)
                stats.passed += 1
                return
            self._relay_and_keep(upstream, keep)

    def _relay_and_keep(self, upstream: requests.Response, keep: Path) -> None:
        stats = self.owner.stats
        expected = int(upstream.headers.get("Content-Length", -1))
        partial = keep.with_name(f".{keep.name}.{os.getpid()}.{threading.get_ident()}")
        received = 0
        # The last chunk reaches the client only once the file is in place:
        # a client that asks again as soon as it has the whole package (apt,
        # a second build) then finds it in the cache.
        held = b""
        try:
            with open(partial, "wb") as sink:
                for chunk in upstream.raw.stream(CHUNK, decode_content=False):
                    sink.write(chunk)
                    if held:
                        self.wfile.write(held)
                    held = chunk
                    received += len(chunk)
            if expected in (-1, received):
                os.replace(partial, keep)
                stats.misses += 1
            self.wfile.write(held)
        finally:
            partial.unlink(missing_ok=True)
