"""Real servers on loopback for the storage and release tests.

- nginx with its WebDAV modules (dav, dav_ext), optionally behind Basic auth;
- moto's AWS emulator (S3, EC2) as a threaded HTTP server;
- a fault-injecting HTTP proxy that stands between a client and a server
  and answers 500, or drops the connection in the middle of a request body,
  as many times as a test asks.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import http.server
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import requests

NGINX_DAV_EXT = "/usr/lib/nginx/modules/ngx_http_dav_ext_module.so"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")


@dataclass
class Nginx:
    """nginx serving `root` over WebDAV; `credentials` turns on Basic auth; `locking`, WebDAV's LOCK;
    `tls` (a certificate and its key), the same over HTTPS too, at https_url."""

    directory: Path
    credentials: tuple[str, str] | None = None
    locking: bool = True
    tls: tuple[Path, Path] | None = None
    port: int = field(default_factory=free_port)
    tls_port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def root(self) -> Path:
        return self.directory / "root"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/images"

    @property
    def https_url(self) -> str:
        return f"https://127.0.0.1:{self.tls_port}/images"

    def start(self) -> Nginx:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "images").mkdir(exist_ok=True)
        auth = ""
        if self.credentials:
            user, password = self.credentials
            digest = base64.b64encode(hashlib.sha1(password.encode()).digest()).decode()
            (self.directory / "htpasswd").write_text(f"{user}:{{SHA}}{digest}\n")
            auth = f'auth_basic "images"; auth_basic_user_file {self.directory}/htpasswd;'
        lock_zone = "dav_ext_lock_zone zone=images:1m timeout=60s;" if self.locking else ""
        lock = "dav_ext_lock zone=images;" if self.locking else ""
        methods = "PROPFIND OPTIONS LOCK UNLOCK" if self.locking else "PROPFIND OPTIONS"
        tls = (
            f"listen 127.0.0.1:{self.tls_port} ssl; ssl_protocols TLSv1.2 TLSv1.3; "
            f"ssl_certificate {self.tls[0]}; ssl_certificate_key {self.tls[1]};"
            if self.tls
            else ""
        )
        (self.directory / "nginx.conf").write_text(f"""
load_module {NGINX_DAV_EXT};
user root;
daemon off;
pid {self.directory}/nginx.pid;
error_log {self.directory}/error.log;
events {{}}
http {{
    access_log {self.directory}/access.log;
    client_body_temp_path {self.root}/.client-body;
    client_max_body_size 0;
    {lock_zone}
    server {{
        listen 127.0.0.1:{self.port};
        {tls}
        root {self.root};
        location /images/ {{
            {auth}
            dav_methods PUT DELETE MKCOL COPY MOVE;
            dav_ext_methods {methods};
            {lock}
            dav_access user:rw group:r all:r;
            create_full_put_path on;
        }}
    }}
}}
""")
        self.process = subprocess.Popen(
            ["nginx", "-c", str(self.directory / "nginx.conf"), "-p", str(self.directory)], stderr=subprocess.PIPE
        )
        wait_for_port(self.port)
        if self.tls:
            wait_for_port(self.tls_port)
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def requests(self, method: str | None = None) -> int:
        """How many requests of a method (of any, without one) nginx has served."""
        log = self.directory / "access.log"
        lines = log.read_text().splitlines() if log.exists() else []
        return sum(method is None or f'"{method} ' in line for line in lines)


class Moto:
    """moto's AWS emulator in this process, on a real socket."""

    def __init__(self):
        from moto.server import ThreadedMotoServer

        self.port = free_port()
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Moto:
        self.server.start()
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        self.server.stop()

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }


class FaultProxy:
    """An HTTP proxy to `upstream` that misbehaves on request: queue faults with
    `fail(method, "500" | "drop", times)`; each matching request uses up one."""

    def __init__(self, upstream: str):
        self.upstream = upstream.rstrip("/")
        self.faults: dict[str, collections.deque] = collections.defaultdict(collections.deque)
        self.seen: list[str] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def handle_one_request(self):
                try:
                    super().handle_one_request()
                except (ConnectionResetError, BrokenPipeError):
                    self.close_connection = True

            def _any(self):
                proxy.relay(self)

            do_GET = do_PUT = do_HEAD = do_DELETE = do_MKCOL = do_MOVE = do_PROPFIND = do_COPY = _any
            do_LOCK = do_UNLOCK = _any

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True

    @property
    def url(self) -> str:
        path = self.upstream.split("/", 3)[3] if self.upstream.count("/") >= 3 else ""
        return f"http://127.0.0.1:{self.server.server_address[1]}/{path}"

    def start(self) -> FaultProxy:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def fail(self, method: str, kind: str, times: int = 1) -> None:
        with self.lock:
            self.faults[method].extend([kind] * times)

    def relay(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        with self.lock:
            self.seen.append(handler.command)
            fault = self.faults[handler.command].popleft() if self.faults[handler.command] else None
        length = int(handler.headers.get("Content-Length") or 0)
        if fault == "drop":
            handler.rfile.read(min(length, 1024))  # take some of the body, then hang up
            handler.close_connection = True
            handler.connection.shutdown(socket.SHUT_RDWR)
            return
        body = handler.rfile.read(length) if length else None
        if fault == "500":
            handler.send_response(500)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        own = f"http://127.0.0.1:{self.server.server_address[1]}"
        base = self.upstream.split("/", 3)
        upstream_root = "/".join(base[:3])
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in ("host", "content-length")}
        if "Destination" in headers:
            headers["Destination"] = headers["Destination"].replace(own, upstream_root)
        response = requests.request(
            handler.command, upstream_root + handler.path, headers=headers, data=body, allow_redirects=False, timeout=60
        )
        handler.send_response(response.status_code)
        for name, value in response.headers.items():
            if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                handler.send_header(name, value)
        content = response.content if handler.command != "HEAD" else b""
        handler.send_header(
            "Content-Length",
            str(len(response.content)) if handler.command != "HEAD" else response.headers.get("Content-Length", "0"),
        )
        handler.end_headers()
        handler.wfile.write(content)


def have_nginx() -> bool:
    return shutil.which("nginx") is not None and Path(NGINX_DAV_EXT).exists()


@dataclass
class Recorded:
    method: str
    path: str  # with the query string
    headers: dict[str, str]
    body: bytes


class RecordingServer:
    """An HTTP server that records every request and answers through `answer`,
    a function (request, server) -> (status, headers, body); for the cloud APIs
    that have no local emulator, and for webhooks. host: the loopback address it listens on
    (127.0.0.2: another origin than 127.0.0.1's servers, for redirects)."""

    def __init__(self, answer=None, host: str = "127.0.0.1"):
        self.requests: list[Recorded] = []
        self.answer: Callable[..., tuple] = answer or (lambda request, server: (200, {}, b"{}"))
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _any(self):
                length = int(self.headers.get("Content-Length") or 0)
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    body = b""
                    while size := int(self.rfile.readline().strip() or b"0", 16):
                        body += self.rfile.read(size)
                        self.rfile.readline()
                    self.rfile.readline()
                else:
                    body = self.rfile.read(length) if length else b""
                request = Recorded(self.command, self.path, dict(self.headers.items()), body)
                recorder.requests.append(request)
                status, headers, content = recorder.answer(request, recorder)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _any

        self.host = host
        self.server = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.server.server_address[1]}"

    def start(self) -> RecordingServer:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Azurite:
    """Azurite, Microsoft's Azure Storage emulator (npm), serving blobs on loopback."""

    ACCOUNT = "devstoreaccount1"
    # Azurite's published development key: not a secret.
    KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

    def __init__(self, directory: Path):
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{self.ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={self.ACCOUNT};AccountKey={self.KEY};BlobEndpoint={self.url};"
        )

    def start(self) -> Azurite:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                "azurite-blob",
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                str(self.port),
                "--location",
                str(self.directory),
                "--silent",
                "--skipApiVersionCheck",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, timeout=30)
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


def have_azurite() -> bool:
    return shutil.which("azurite-blob") is not None


class Mailbox:
    """aiosmtpd's SMTP server on loopback, keeping what it receives."""

    def __init__(self, port: int | None = None):
        from aiosmtpd.controller import Controller

        self.messages: list = []
        mailbox = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                import email
                import email.policy

                mailbox.messages.append(
                    (
                        envelope.mail_from,
                        list(envelope.rcpt_tos),
                        email.message_from_bytes(envelope.content, policy=email.policy.default),
                    )
                )
                return "250 OK"

        self.port = port or free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)

    def start(self) -> Mailbox:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()
