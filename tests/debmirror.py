"""Test helper: a small Debian mirror of real packages, served over HTTP on loopback.

Packages are built by dpkg-deb from files given to them; the suite's
Packages.xz and InRelease (unsigned: what the builder checks is the InRelease
the image's apt lists hold) list them with their checksums, as the archive's do.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import lzma
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import requests

from tasks.model.arch import Arch

# The host's libraries, where an amd64 package installs them.
MULTIARCH = Arch.AMD64.spec.multiarch
LIBS = f"usr/lib/{MULTIARCH}"


@dataclass
class Deb:
    name: str
    version: str
    files: dict[str, Path | bytes] = field(default_factory=dict)  # path in the package -> host file or content
    fields: dict[str, str] = field(default_factory=dict)  # more control fields: Depends, Multi-Arch
    arch: str = "amd64"

    def control(self) -> str:
        lines = [f"Package: {self.name}", f"Version: {self.version}", f"Architecture: {self.arch}"]
        lines += [f"{key}: {value}" for key, value in self.fields.items()]
        return "\n".join(lines + ["Maintainer: tests <tests@example.org>", "Description: a test package"]) + "\n"

    def status(self, arch: str = "arm64") -> str:
        """Its paragraph in an image's dpkg status, as installed for arch."""
        return self.control().replace(f"Architecture: {self.arch}", f"Architecture: {arch}") + (
            "Status: install ok installed\n\n"
        )


def build(deb: Deb, directory: Path) -> Path:
    tree = directory / f"{deb.name}.tree"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(deb.control())
    for path, content in deb.files.items():
        inside = tree / path.lstrip("/")
        inside.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Path):
            shutil.copy(content.resolve(), inside)
        else:
            inside.write_bytes(content)
    out = directory / f"{deb.name}_{deb.version.split(':')[-1]}_{deb.arch}.deb"
    command = ["dpkg-deb", "--root-owner-group", "-Zxz", "-b", str(tree), str(out)]
    subprocess.run(command, check=True, capture_output=True)
    shutil.rmtree(tree)
    return out


def publish(root: Path, suite: str, debs: list[Deb], arch: str = "amd64") -> bytes:
    """The suite in a mirror at root (root/dists/<suite>, root/pool/main); returns its InRelease."""
    pool = root / "pool" / "main"
    pool.mkdir(parents=True, exist_ok=True)
    paragraphs = []
    for deb in debs:
        package = build(deb, pool)
        data = package.read_bytes()
        paragraphs.append(
            deb.control()
            + f"Filename: pool/main/{package.name}\nSize: {len(data)}\nSHA256: {hashlib.sha256(data).hexdigest()}\n"
        )
    index = lzma.compress("\n".join(paragraphs).encode())
    name = f"main/binary-{arch}/Packages.xz"
    path = root / "dists" / suite / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(index)
    release = (
        f"Origin: Debian\nSuite: {suite}\nComponents: main\nSHA256:\n"
        f" {hashlib.sha256(index).hexdigest()} {len(index)} {name}\n"
    ).encode()
    (root / "dists" / suite / "InRelease").write_bytes(release)
    return release


def image_of(target: Path, mirror: str, suite: str, debs: list[Deb], arch: str = "arm64") -> None:
    """An image's dpkg status and apt lists at target, as if it had installed debs (for arch) from the suite."""
    from tasks.stages import aptlists

    release_url = aptlists.release_url(mirror, suite)
    lists = target / aptlists.LISTS
    lists.mkdir(parents=True, exist_ok=True)
    with requests.get(release_url, timeout=10) as answer:
        answer.raise_for_status()
        (lists / aptlists.list_name(release_url)).write_bytes(answer.content)
    (target / "var/lib/dpkg").mkdir(parents=True, exist_ok=True)
    (target / "var/lib/dpkg/status").write_text("".join(deb.status(arch) for deb in debs))


@contextlib.contextmanager
def served(root: Path) -> Iterator[str]:
    """root over HTTP on loopback; yields its URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def program_and_libraries() -> list[Deb]:
    """A program, the library it loads, the C library; and what the twin must leave out."""
    return [
        Deb(
            "tool",
            "1.0-1",
            {"/usr/bin/tool": Path("/usr/bin/echo"), "/bin/oldtool": Path("/usr/bin/basename")},
            {"Multi-Arch": "foreign", "Depends": "libfoo1 (>= 2), debianutils | other-utils, libc6:any"},
        ),
        Deb("libfoo1", "2.0-1", {f"/{LIBS}/libfoo.txt": b"foo\n"}, {"Multi-Arch": "same", "Depends": "libc6"}),
        Deb(
            "libc6",
            "2.41-1",
            {
                f"/{LIBS}/ld-linux-x86-64.so.2": Path("/lib64/ld-linux-x86-64.so.2"),
                f"/{LIBS}/libc.so.6": Path(f"/lib/{MULTIARCH}/libc.so.6"),
            },
            {"Multi-Arch": "same"},
        ),
        # A program the tool depends on (not a library: not in the twin), and a library nothing loads.
        Deb("debianutils", "5.0-1", {"/usr/bin/which": b"#!/bin/sh\n"}, {"Multi-Arch": "foreign"}),
        Deb("libunused1", "1.0-1", {f"/{LIBS}/libunused.txt": b"unused\n"}, {"Multi-Arch": "same"}),
    ]
