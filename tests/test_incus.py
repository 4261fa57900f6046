"""Incus itself imports a published image as a VM image from the storage's catalogue
(tasks/stages/incus.py, tasks/stages/catalogue.py): Debian's incus (bookworm-backports on Debian 12,
trixie's own on 13) in a container of a plain system of this host's release, its daemon started by
hand, the storage served by nginx over HTTPS (`incus remote add` takes no other). Incus checks each
file's SHA-256 and the fingerprint, SHA-256 of the metadata tarball then the disk; a catalogue that
gives another fingerprint is refused. The image is imported, not launched: a VM needs vhost_vsock,
which a test machine need not have."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess

import pytest

from tasks.stages import catalogue, manifest
from tasks.storage import RetryPolicy

from . import plainsystem, servers
from .conftest import fake_outputs
from .stores import dav_store
from .test_storage import publish

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="debootstrap and containers need root"),
    pytest.mark.skipif(shutil.which("podman") is None, reason="podman is installed by tools/setup-host"),
    pytest.mark.skipif(not servers.have_nginx(), reason="nginx with WebDAV is installed by tools/setup-host"),
]
# Where each host release finds Debian's incus.
SOURCES = {
    "bookworm": ("deb http://deb.debian.org/debian bookworm-backports main", "bookworm-backports"),
    "trixie": ("", "trixie"),
}
# The daemon as its service would start it, then a storage pool and the default profile's disk on it.
SET_UP = """set -e
if [ -n "$SOURCE" ]; then echo "$SOURCE" > /etc/apt/sources.list.d/incus.list; fi
apt-get -q update
DEBIAN_FRONTEND=noninteractive apt-get -q install -y --no-install-recommends -t "$SUITE" \
    incus-base incus-client ca-certificates
cp /trust/certificate.pem /usr/local/share/ca-certificates/test-storage.crt
update-ca-certificates
mkdir -p /var/log/incus
/usr/libexec/incus/incusd --group incus-admin --logfile /var/log/incus/incusd.log > /dev/null 2>&1 &
incus admin waitready --timeout 60
incus storage create default dir
incus profile device add default root disk path=/ pool=default
"""
VERSION = "20261125-1"
IMAGE = f"debian-12-nocloud-amd64-{VERSION}"


@pytest.fixture(scope="module")
def incus(tmp_path_factory):
    """A container running Incus's daemon, trusting the certificate nginx serves; run(script) in it."""
    release = plainsystem.host_release()
    if release not in SOURCES:
        pytest.skip(f"this host runs {release or 'an unknown release'}, not Debian 12 or 13")
    work = tmp_path_factory.mktemp("incus")
    trust = work / "trust"
    trust.mkdir()
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        + ["-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
        + ["-keyout", str(trust / "key.pem"), "-out", str(trust / "certificate.pem")],
        check=True,
        capture_output=True,
    )
    image = f"localhost/plain-{release}-incus:{work.name[-8:].lower()}"
    plainsystem.make(release, work / "root", image, unsafe_io=True)
    container = f"incus-test-{work.name[-8:].lower()}"
    podman = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]
    try:
        subprocess.run(
            [*podman, "run", "--detach", "--name", container, "--privileged", "--network", "host"]
            + ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096", "-v", f"{trust}:/trust:ro"]
            + [image, "sleep", "infinity"],
            check=True,
            capture_output=True,
        )

        def run(script: str, **env: str) -> subprocess.CompletedProcess:
            variables = [f"--env={name}={value}" for name, value in env.items()]
            return subprocess.run(
                [*podman, "exec", *variables, container, "bash", "-c", script],
                capture_output=True,
                text=True,
                timeout=600,
            )

        source, suite = SOURCES[release]
        ready = run(SET_UP, SOURCE=source, SUITE=suite)
        assert ready.returncode == 0, ready.stdout[-3000:] + ready.stderr[-3000:]
        yield trust, run
    finally:
        subprocess.run([*podman, "rm", "--force", "--time", "0", container], capture_output=True)
        subprocess.run(["podman", "rmi", "--force", image], capture_output=True)


def test_incus_imports_the_published_qcow2_as_a_vm_image_by_its_alias(incus, test_matrix, tmp_path):
    trust, run = incus
    nginx = servers.Nginx(tmp_path / "nginx", tls=(trust / "certificate.pem", trust / "key.pem")).start()
    try:
        store = dav_store(nginx)
        cell = test_matrix.cell("bookworm-nocloud-amd64")
        files = fake_outputs(tmp_path / "cell", cell, version=VERSION)
        manifest.write(cell, files)
        publish(cell, files, store, tmp_path)
        directory = f"bookworm/daily/{VERSION}"
        vm = store.read(f"{directory}/{IMAGE}.incus.tar.xz") + store.read(f"{directory}/{IMAGE}.qcow2")
        fingerprint = hashlib.sha256(vm).hexdigest()

        copied = run(
            f"incus remote add debian {nginx.https_url} --protocol=simplestreams --public"
            " && incus image copy debian:debian/12/nocloud/daily local: --vm"
            " && incus image list local: --format=json"
        )
        assert copied.returncode == 0, copied.stdout + copied.stderr
        [image] = json.loads(copied.stdout[copied.stdout.index("[") :])
        assert (image["fingerprint"], image["type"], image["architecture"]) == (
            fingerprint,
            "virtual-machine",
            "x86_64",
        )
        assert {k: image["properties"].get(k) for k in ("os", "release", "variant", "serial")} == {
            "os": "debian",
            "release": "bookworm",
            "variant": "nocloud",
            "serial": VERSION,
        }
        listed = run("incus image alias list debian: --format=json")
        assert listed.returncode == 0, listed.stderr
        names = {alias["name"] for alias in json.loads(listed.stdout) if alias["target"] == fingerprint}
        assert {"debian/12/nocloud/daily", "debian/bookworm/nocloud/daily/amd64"} <= names

        # A catalogue that names another fingerprint: Incus computes its own, and refuses the image.
        store.write(f"{directory}/FINGERPRINTS", f"{'0' * 64}  {IMAGE}.incus.tar.xz\n".encode())
        backend = store.location.open(RetryPolicy(2, 0.01))
        with backend.locked("test"):
            catalogue.write(backend, anew=True)
        refused = run(
            f"incus image delete local:{fingerprint} && rm -rf /var/cache/incus/* /root/.cache/incus"
            " && incus image copy debian:debian/12/nocloud/daily local: --vm"
        )
        assert refused.returncode != 0 and "fingerprint" in refused.stderr.lower(), refused.stdout + refused.stderr
    finally:
        nginx.stop()
