"""Publishing to storage: a directory, WebDAV (real nginx) and S3 (moto's emulator).

Every behaviour is checked on the three backends, and what storage holds is
read independently of the code under test: the directory itself, nginx's
document root, or boto3 against moto.
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tasks import published
from tasks.model import plan
from tasks.model.matrix import PublishSettings
from tasks.stages import manifest
from tasks.stages import publish as publication
from tasks.storage import Location, PublishFailed
from tasks.system import atomic
from tasks.system.checksum import parse_sums

from . import servers
from .conftest import REPO, fake_outputs, needs_mounts
from .stores import dav_store

FAST = PublishSettings(keep_dailies=14, retries=3, retry_delay=0.01)
pytestmark = pytest.mark.skipif(not servers.have_nginx(), reason="nginx with WebDAV is installed by tools/setup-host")


def publish(cell, files, store, tmp_path, settings=FAST):
    return publication.publish(cell, files, store.location, settings)


def sha512(data: bytes) -> str:
    return hashlib.sha512(data).hexdigest()


IMAGE = "debian-12-nocloud-amd64-20261125-1200"
DAILY = "bookworm/daily/20261125-1200"
# What a cell publishes: image files, manifest, SBOMs, provenance, changes, a qcow2's Incus metadata.
SUFFIXES = (
    "tar.xz",
    "qcow2",
    "json",
    "spdx.json",
    "cdx.json",
    "intoto.json",
    "changes.json",
    "changes.txt",
    "incus.tar.xz",
)


def test_publish_layout_checksums_and_latest(nocloud, store, tmp_path):
    cell, files = nocloud
    receipt = publish(cell, files, store, tmp_path)
    # Unsigned: no key is configured here (tests/test_signing.py signs).
    assert store.files(DAILY) == {
        "SHA512SUMS",
        "SHA256SUMS",
        "FINGERPRINTS",  # the Incus VM image's (tasks/stages/incus.py)
        "index.html",  # the version's page of the web index (tasks/stages/webindex.py)
        *(f"{IMAGE}.{suffix}" for suffix in SUFFIXES),
    }
    sums = store.sums(DAILY)
    assert set(sums) == {f"{IMAGE}.{suffix}" for suffix in SUFFIXES}
    for name, digest in sums.items():
        assert sha512(store.read(f"{DAILY}/{name}")) == digest
    # The image files' SHA-256 too, for the catalogue's consumers (tasks/stages/catalogue.py).
    sha256s = parse_sums(store.read(f"{DAILY}/SHA256SUMS").decode())
    items = [n for n in sums if publication.has_sha256(n)]
    assert sha256s == {n: hashlib.sha256(store.read(f"{DAILY}/{n}")).hexdigest() for n in items}
    assert set(sha256s) == {f"{IMAGE}.tar.xz", f"{IMAGE}.qcow2", f"{IMAGE}.incus.tar.xz"}
    vm = store.read(f"{DAILY}/{IMAGE}.incus.tar.xz") + store.read(f"{DAILY}/{IMAGE}.qcow2")
    fingerprints = parse_sums(store.read(f"{DAILY}/FINGERPRINTS").decode())
    assert fingerprints == {f"{IMAGE}.incus.tar.xz": hashlib.sha256(vm).hexdigest()}, "cat tarball disk | sha256sum"
    assert store.read(f"{DAILY}/{IMAGE}.json") == files.manifest.read_bytes()
    assert store.read("bookworm/daily/latest") == b"20261125-1200\n"
    assert receipt == atomic.read_json(files.published) and receipt["directory"] == DAILY
    assert publication.still_published(str(files.published), store.location.url)


def test_publishing_again_uploads_nothing(nocloud, store, tmp_path, capsys):
    cell, files = nocloud
    publish(cell, files, store, tmp_path)
    capsys.readouterr()
    publish(cell, files, store, tmp_path)
    assert capsys.readouterr().out.count("already published, unchanged") == len(SUFFIXES)


def test_cells_of_a_release_share_sha512sums(test_matrix, store, tmp_path):
    for name in ("bookworm-nocloud-amd64", "bookworm-genericcloud-amd64"):
        cell = test_matrix.cell(name)
        files = fake_outputs(tmp_path / "build", cell)
        manifest.write(cell, files)
        publish(cell, files, store, tmp_path)
    names = store.sums(DAILY)
    assert sum("nocloud" in n for n in names) == sum("genericcloud" in n for n in names) == len(SUFFIXES)


def test_old_dailies_are_deleted_but_not_latest(test_matrix, store, tmp_path):
    cell = test_matrix.cell("bookworm-nocloud-amd64")
    settings = PublishSettings(keep_dailies=2, retries=2, retry_delay=0.01)
    for version in ("20261120-1", "20261121-1", "20261122-1", "20261123-1"):
        files = fake_outputs(tmp_path / version, cell, version=version)
        manifest.write(cell, files)
        publish(cell, files, store, tmp_path, settings)
    assert store.read("bookworm/daily/latest") == b"20261123-1\n"
    for version, kept in (("20261120-1", False), ("20261121-1", False), ("20261122-1", True), ("20261123-1", True)):
        assert bool(store.files(f"bookworm/daily/{version}")) is kept, version


def test_versions_follow_their_order_and_what_is_not_one_is_left_alone(test_matrix, store, tmp_path):
    """latest names the newest version, whatever was published last; retention keeps the newest
    keep_dailies, never the version just published nor a directory that is not a version."""
    cell = test_matrix.cell("bookworm-nocloud-amd64")
    store.write("bookworm/daily/rc1/notes.txt", b"made by hand")
    store.write("bookworm/daily/latest", b"rc1\n")
    settings = PublishSettings(keep_dailies=2, retries=2, retry_delay=0.01)
    # As text, 20261207-9 would sort after 20261207-10.
    versions = ("20261207-10", "20261207-9", "20261207-2", "20261206-2300")
    for version in versions:
        files = fake_outputs(tmp_path / version, cell, version=version)
        manifest.write(cell, files)
        publish(cell, files, store, tmp_path, settings)
        assert store.files(f"bookworm/daily/{version}"), f"{version}, just published, is kept"
    assert store.read("bookworm/daily/latest") == b"20261207-10\n"
    assert {v for v in versions if store.files(f"bookworm/daily/{v}")} == {"20261207-10", "20261207-9", "20261206-2300"}
    assert store.read("bookworm/daily/rc1/notes.txt") == b"made by hand"
    changes = json.loads(store.read("bookworm/daily/20261207-9/debian-12-nocloud-amd64-20261207-9.changes.json"))
    assert changes["previous_version"] is None, "20261207-10 is newer: 20261207-9 has no previous version"


def test_a_damaged_published_file_is_replaced_by_publishing_again(nocloud, store, signing_env, tmp_path, capsys):
    cell, files = nocloud
    publish(cell, files, store, tmp_path)
    good = store.read(f"{DAILY}/{IMAGE}.qcow2")
    damaged = bytearray(good)
    damaged[len(damaged) // 2] ^= 0x01  # one flipped bit, the same size
    store.write(f"{DAILY}/{IMAGE}.qcow2", bytes(damaged))
    store.write(f"{DAILY}/{IMAGE}.spdx.json", b"")  # and one emptied
    capsys.readouterr()
    publish(cell, files, store, tmp_path)
    out = capsys.readouterr().out
    assert f"{IMAGE}.qcow2: the published file differs from this one: replacing it" in out
    assert out.count("already published, unchanged") == len(SUFFIXES) - 2
    assert store.read(f"{DAILY}/{IMAGE}.qcow2") == good
    the_plan = plan_of(store, tmp_path)
    checked = published.verify(the_plan, f"bookworm-nocloud-amd64@{DAILY.rsplit('/', 1)[1]}", signing_env.public)
    assert any("qcow2" in line for line in checked)


def plan_of(store, tmp_path):
    options = {"storage": store.location.url, "workdir": str(tmp_path / "work"), "matrix": str(REPO / "matrix.yaml")}
    return plan.from_options(REPO, options.get)


def test_a_changed_file_never_stands_beside_a_stale_checksum(nocloud, store, tmp_path, monkeypatch):
    """Republishing changed files, interrupted after the first: SHA512SUMS still only vouches
    for files that match it, nothing half-written carries a published name, and a rerun completes."""
    cell, files = nocloud
    publish(cell, files, store, tmp_path)
    files.artifact("tar.xz").write_bytes(b"rebuilt" * 1000)
    files.artifact("qcow2").write_bytes(b"rebuilt qcow2" * 1000)
    manifest.write(cell, files)
    backend_class = type(store.location.open())
    # What gives a file its name: a move, or S3's upload to the key itself (an object appears whole).
    commit = "move" if "move" in vars(backend_class) else "upload"
    real = getattr(backend_class, commit)

    def interrupted(self, *args):
        if args[1].endswith(".qcow2"):  # the target: move(source, target), upload(local, path, ...)
            raise KeyboardInterrupt
        real(self, *args)

    monkeypatch.setattr(backend_class, commit, interrupted)
    with pytest.raises(KeyboardInterrupt):
        publish(cell, files, store, tmp_path)
    monkeypatch.setattr(backend_class, commit, real)

    listed = store.sums(DAILY)
    for name, digest in listed.items():
        assert sha512(store.read(f"{DAILY}/{name}")) == digest, name
    assert f"{IMAGE}.tar.xz" not in listed and f"{IMAGE}.qcow2" not in listed
    assert not [n for n in store.files(DAILY) if ".upload-" in n], "the temporary upload was removed"
    publish(cell, files, store, tmp_path)
    listed = store.sums(DAILY)
    assert listed[f"{IMAGE}.qcow2"] == sha512(files.artifact("qcow2").read_bytes())
    assert store.read(f"{DAILY}/{IMAGE}.qcow2") == files.artifact("qcow2").read_bytes()


def test_a_source_that_changed_after_its_manifest_is_refused(nocloud, store, tmp_path):
    cell, files = nocloud
    files.artifact("qcow2").write_bytes(b"tampered after the manifest")
    with pytest.raises(
        PublishFailed, match="differs from the local file|the local file differs from the one described"
    ):
        publish(cell, files, store, tmp_path)
    assert store.read(f"{DAILY}/SHA512SUMS") in (None, b"")
    assert not [n for n in store.files(DAILY) if ".upload-" in n or n.endswith(".qcow2")]


# --------------------------------------------------------------------------
# Faults, with nginx behind a proxy that misbehaves on request


@pytest.fixture
def flaky(tmp_path):
    nginx = servers.Nginx(tmp_path / "nginx").start()
    proxy = servers.FaultProxy(nginx.url).start()
    yield nginx, proxy, dav_store(nginx), Location(proxy.url)
    proxy.stop()
    nginx.stop()


def test_server_errors_are_retried(nocloud, flaky, tmp_path):
    cell, files = nocloud
    nginx, proxy, inside, location = flaky
    proxy.fail("PUT", "500", times=2)
    publication.publish(cell, files, location, FAST)
    assert proxy.seen.count("PUT") >= 2 + len(SUFFIXES)  # two refused, then each file
    assert set(inside.sums(DAILY)) == {f"{IMAGE}.{suffix}" for suffix in SUFFIXES}


def test_persistent_server_errors_fail_clearly_and_a_rerun_completes(nocloud, flaky, tmp_path):
    cell, files = nocloud
    nginx, proxy, inside, location = flaky
    proxy.fail("PUT", "500", times=FAST.retries)
    with pytest.raises(PublishFailed, match=r"uploading .* HTTP 500 .*gave up after 3 attempts"):
        publication.publish(cell, files, location, FAST)
    assert inside.read(f"{DAILY}/SHA512SUMS") is None and inside.read("bookworm/daily/latest") is None
    publication.publish(cell, files, location, FAST)
    assert len(inside.sums(DAILY)) == len(SUFFIXES)


def test_a_connection_dropped_mid_upload_is_retried(nocloud, flaky, tmp_path):
    cell, files = nocloud
    nginx, proxy, inside, location = flaky
    proxy.fail("PUT", "drop", times=2)
    publication.publish(cell, files, location, FAST)
    for name, digest in inside.sums(DAILY).items():
        assert sha512(inside.read(f"{DAILY}/{name}")) == digest


def test_wrong_credentials_fail_without_showing_them(nocloud, tmp_path, monkeypatch):
    cell, files = nocloud
    nginx = servers.Nginx(tmp_path / "nginx", credentials=("uploader", "right-secret")).start()
    try:
        monkeypatch.setenv("IMAGES_STORAGE_USER", "uploader")
        monkeypatch.setenv("IMAGES_STORAGE_PASSWORD", "wrong-secret")
        with pytest.raises(PublishFailed) as caught:
            publication.publish(cell, files, Location(nginx.url), FAST)
        assert "refused the credentials" in str(caught.value) and "secret" not in str(caught.value)
        monkeypatch.setenv("IMAGES_STORAGE_PASSWORD", "right-secret")
        publication.publish(cell, files, Location(nginx.url), FAST)
        assert len(dav_store(nginx).sums(DAILY)) == len(SUFFIXES)
    finally:
        nginx.stop()


@needs_mounts  # a tmpfs
def test_a_full_disk_on_the_server_fails_clearly_and_keeps_what_was_published(test_matrix, tmp_path):
    cell = test_matrix.cell("bookworm-nocloud-amd64")
    nginx = servers.Nginx(tmp_path / "nginx")
    nginx.root.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "full-disk-test", str(nginx.root)], check=True)
    try:
        nginx.start()
        small = fake_outputs(tmp_path / "first", cell, version="20261124-1")
        manifest.write(cell, small)
        publication.publish(cell, small, Location(nginx.url), FAST)
        big = fake_outputs(tmp_path / "second", cell, version="20261125-1")
        big.artifact("tar.xz").write_bytes(os.urandom(6 << 20))  # more than the server has room for
        manifest.write(cell, big)
        with pytest.raises(PublishFailed) as caught:
            publication.publish(cell, big, Location(nginx.url), FAST)
        assert "HTTP 5" in str(caught.value)
        inside = dav_store(nginx)
        assert inside.read("bookworm/daily/latest") == b"20261124-1\n", "the published state is intact"
        for name, digest in inside.sums("bookworm/daily/20261124-1").items():
            assert sha512(inside.read(f"bookworm/daily/20261124-1/{name}")) == digest
        subprocess.run(["mount", "-o", "remount,size=64m", str(nginx.root)], check=True)
        publication.publish(cell, big, Location(nginx.url), FAST)
        assert inside.read("bookworm/daily/latest") == b"20261125-1\n"
    finally:
        nginx.stop()
        subprocess.run(["umount", str(nginx.root)], check=True)


# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("storage", "file://BASE/storage"),
        ("/srv/images", "file:///srv/images"),
        ("file:///srv/images/", "file:///srv/images"),
        ("https://images.example.org/debian/", "https://images.example.org/debian"),
        ("s3://bucket/prefix", "s3://bucket/prefix"),
    ],
)
def test_locations(tmp_path, text, expected):
    assert Location.parse(text, tmp_path).url == expected.replace("BASE", str(tmp_path))


@pytest.mark.parametrize(
    "text, message",
    [
        ("ftp://example.org/images", "expected a directory or a file://, http://, https://, s3:// URL"),
        ("https://user:secret@example.org/x", "credentials do not belong in a storage URL"),
        ("s3:///prefix", "an s3:// URL names a bucket"),
    ],
)
def test_bad_locations(tmp_path, text, message):
    with pytest.raises(ValueError, match=message) as caught:
        Location.parse(text, tmp_path)
    assert "secret" not in str(caught.value)


def test_credentials_in_the_matrix_are_refused(tmp_path):
    import yaml

    from tasks.model import plan
    from tasks.model.matrix import MatrixError

    repo = __import__("pathlib").Path(__file__).resolve().parent.parent
    data = yaml.safe_load((repo / "tests" / "data" / "matrix.yaml").read_text())
    data["publish"]["storage"] = "https://uploader:hunter2@images.example.org/debian"
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(MatrixError) as caught:
        plan.from_options(repo, {"matrix": str(tmp_path / "m.yaml"), "workdir": str(tmp_path)}.get)
    assert "publish.storage: credentials do not belong" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_remote_publication_is_trusted_without_asking_the_server(nocloud, tmp_path):
    cell, files = nocloud
    files.published.write_text(
        json.dumps(
            {
                "record": "published/2",
                "storage": "https://images.example.org/debian",
                "directory": DAILY,
                "files": {},
                "sizes": {},
            }
        )
    )
    assert publication.still_published(str(files.published), "https://images.example.org/debian")
    assert not publication.still_published(str(files.published), "s3://elsewhere/debian")


def test_a_storage_that_is_a_file_is_one_line(nocloud, tmp_path):
    cell, files = nocloud
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    with pytest.raises(PublishFailed) as caught:
        publication.publish(cell, files, Location(a_file.as_uri()), FAST)
    assert str(caught.value) == f"{a_file.as_uri()}: taking the storage lock: {a_file}: not a directory"


@needs_mounts  # a tmpfs
def test_a_read_only_storage_is_one_line_and_changes_nothing(nocloud, tmp_path):
    cell, files = nocloud
    root = tmp_path / "read-only"
    root.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "read-only-test", str(root)], check=True)
    try:
        with pytest.raises(PublishFailed) as caught:
            publication.publish(cell, files, Location(root.as_uri()), FAST)
        assert str(caught.value) == f"{root.as_uri()}: taking the storage lock: {root}/.lock: Read-only file system"
        assert not any(root.iterdir())
    finally:
        subprocess.run(["umount", str(root)], check=True)


def doit(*args):
    return subprocess.run(
        [sys.executable, "-m", "doit", "-f", str(REPO / "dodo.py"), *args], capture_output=True, text=True, timeout=120
    )


def test_a_token_in_the_storage_url_is_sent_but_never_shown_or_recorded(nocloud, tmp_path):
    cell, files = nocloud
    workdir = files.dir.parent
    nginx = servers.Nginx(tmp_path / "nginx").start()
    try:
        given = f"storage={nginx.url}?token=SECRET-123"
        listed = doit("list", "--all", f"workdir={workdir}", given)
        assert f"{nginx.url}?token=<redacted>" in listed.stdout
        published = doit("--single", f"publish:{cell.name}", f"workdir={workdir}", given)
        assert published.returncode == 0, published.stdout + published.stderr
        assert "token=SECRET-123" in (nginx.directory / "access.log").read_text(), "sent with every request"
        failed = doit(
            "--single", f"publish:{cell.name}", f"workdir={workdir}", f"{given.replace('/images', '/nowhere')}"
        )
        assert failed.returncode != 0 and "does not take WebDAV's LOCK" in failed.stdout
    finally:
        nginx.stop()
    written = [files.published, workdir / "run-summary.json", *(workdir / cell.name / ".doit-state").iterdir()]
    for text in (
        listed.stdout,
        listed.stderr,
        published.stdout,
        failed.stdout,
        failed.stderr,
        *map(Path.read_text, written),
    ):
        assert "SECRET" not in text


def test_a_link_for_people_carries_no_query(tmp_path):
    location = Location.parse("https://images.example.org/debian/?token=SECRET", tmp_path)
    assert location.url == "https://images.example.org/debian?token=<redacted>" and location.query == "token=SECRET"
    assert location.link("bookworm/20261207-1") == "https://images.example.org/debian/bookworm/20261207-1"
