"""A plain Debian system, as debootstrap's minbase makes it, imported into podman; and the
host's certificate authorities, which setup-host's pip and npm need inside it to reach their
registries as the host does (tests/test_setup_host.py, the benchmark's builder section)."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

MIRROR = "http://deb.debian.org/debian"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")


def host_release() -> str:
    """This host's Debian codename (bookworm, trixie), or "" when it does not say."""
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.split("=", 1)[1].strip('"')
    return ""


def _run(cmd: list[str]) -> object:
    return subprocess.run(cmd, check=True, capture_output=True)


def make(release: str, root: Path, name: str, unsafe_io: bool, run: Callable[[list[str]], object] = _run) -> None:
    """debootstrap release into root and import it as the image name; root is removed after.
    unsafe_io: dpkg in it need not sync what it writes (a system thrown away after use)."""
    run(["debootstrap", "--variant=minbase", release, str(root), MIRROR])
    if unsafe_io:
        (root / "etc/dpkg/dpkg.cfg.d/unsafe-io").write_text("force-unsafe-io\n")
    run(
        [
            "bash",
            "-o",
            "pipefail",
            "-c",
            f"tar --create --numeric-owner -C {shlex.quote(str(root))} . | podman import --quiet - {shlex.quote(name)}",
        ]
    )
    shutil.rmtree(root)


def registry_trust(ca: Path) -> list[str]:
    """The host's certificate authorities copied to ca (a path the container sees), and the
    variables through which pip and npm trust them (as `env` arguments)."""
    shutil.copy2(HOST_CA, ca)
    return [f"PIP_CERT={ca}", f"npm_config_cafile={ca}", f"NODE_EXTRA_CA_CERTS={ca}"]
