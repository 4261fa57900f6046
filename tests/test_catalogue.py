"""The storage's simplestreams catalogue (tasks/stages/catalogue.py): made from what each storage holds
(file, WebDAV, S3), kept in step by publication and cleanup, read by Canonical's own client
(sstream-query, sstream-mirror from python-simplestreams) from nginx, and listed by `doit images`."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
from datetime import datetime

import pytest
import yaml

from tasks.model.matrix import PublishSettings
from tasks.model.records import Manifest
from tasks.stages import catalogue, incus, manifest
from tasks.stages import publish as publication
from tasks.storage import RetryPolicy
from tasks.system import signing

from . import browser, servers
from .conftest import REPO, fake_outputs
from .stores import dav_store, local_store
from .test_storage import FAST, publish

pytestmark = pytest.mark.skipif(not servers.have_nginx(), reason="nginx with WebDAV is installed by tools/setup-host")
PRODUCT = "org.debian.cloud:12:nocloud:amd64"
DAILIES = "streams/v1/org.debian.cloud:daily:download.json"


VM_ITEMS = ("incus.tar.xz", "lxd.tar.xz", "disk-kvm.img")


def published(test_matrix, store, tmp_path, cells=("bookworm-nocloud-amd64",), versions=("20261125-1",), settings=FAST):
    for version in versions:
        for name in cells:
            cell = test_matrix.cell(name)
            files = fake_outputs(tmp_path / version / name, cell, version=version)
            manifest.write(cell, files)
            publish(cell, files, store, tmp_path, settings)


def products(store, path=DAILIES) -> dict:
    return json.loads(store.read(path))["products"]


def test_publication_lists_each_image_as_the_storage_holds_it(test_matrix, store, tmp_path):
    published(test_matrix, store, tmp_path, ("bookworm-nocloud-amd64", "bookworm-genericcloud-amd64"))
    index = json.loads(store.read(catalogue.INDEX))
    assert index["format"] == "index:1.0"
    daily = index["index"]["org.debian.cloud:daily:download"]
    assert (daily["path"], daily["format"], daily["datatype"]) == (DAILIES, "products:1.0", "image-downloads")
    assert daily["products"] == ["org.debian.cloud:12:genericcloud:amd64", PRODUCT]
    product = products(store)[PRODUCT]
    assert {k: product[k] for k in ("os", "release", "release_codename", "release_title", "arch", "version")} == {
        "os": "debian",
        "release": "bookworm",
        "release_codename": "bookworm",
        "release_title": "Debian 12 (bookworm)",
        "arch": "amd64",
        "version": "12",
    }
    items = product["versions"]["20261125-1"]["items"]
    assert set(items) == {"disk1.img", "tar.xz", *VM_ITEMS}, "qcow2 as disk1.img, as tools filter for"
    sums = store.sums("bookworm/daily/20261125-1")
    for item in items.values():
        name = item["path"].rsplit("/", 1)[1]
        assert item["path"] == f"bookworm/daily/20261125-1/{name}"
        data = store.read(item["path"])
        assert item["sha512"] == sums[name] and item["size"] == len(data)
        assert item["sha256"] == hashlib.sha256(data).hexdigest(), "from SHA256SUMS, which publication writes"
    assert store.read("streams/v1/index.sjson") is None, "no key: no signed catalogue"


def test_a_qcow2_image_is_also_an_incus_and_lxd_vm_image(test_matrix, store, tmp_path):
    """Its metadata tarball beside it, listed under the ftypes Incus and LXD look for, with the fingerprint
    they check (SHA-256 of the tarball then the disk), which `doit catalogue` finds again in the storage."""
    published(test_matrix, store, tmp_path, ("bookworm-nocloud-amd64", "bookworm-ec2-amd64"))
    directory = "bookworm/daily/20261125-1"
    image = "debian-12-nocloud-amd64-20261125-1"
    items = products(store)[PRODUCT]["versions"]["20261125-1"]["items"]
    tarball, disk = store.read(f"{directory}/{image}.incus.tar.xz"), store.read(f"{directory}/{image}.qcow2")
    for ftype in ("incus.tar.xz", "lxd.tar.xz"):
        item = items[ftype]
        assert (item["ftype"], item["path"], item["size"]) == (ftype, f"{directory}/{image}.incus.tar.xz", len(tarball))
        assert item["sha256"] == hashlib.sha256(tarball).hexdigest()
        assert item["combined_disk-kvm-img_sha256"] == hashlib.sha256(tarball + disk).hexdigest()
    assert items["disk-kvm.img"] == {**items["disk1.img"], "ftype": "disk-kvm.img"}, "the qcow2 is the VM's disk"
    assert "debian-12-ec2-amd64-20261125-1.incus.tar.xz" not in store.sums(directory), "no qcow2, no VM"
    assert not any(
        ftype in VM_ITEMS
        for ftype in products(store)["org.debian.cloud:12:ec2:amd64"]["versions"]["20261125-1"]["items"]
    )

    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:xz") as tar:
        assert tar.getnames() == ["metadata.yaml"]
        member = tar.getmember("metadata.yaml")
        document = yaml.safe_load(tar.extractfile(member).read())  # type: ignore[union-attr]  # a file member
    started = json.loads(store.read(f"{directory}/{image}.json"))["build"]["started"]
    assert document["architecture"] == "x86_64", "the kernel's name, as Incus reads it"
    assert document["creation_date"] == member.mtime == int(datetime.fromisoformat(started).timestamp())
    assert {k: document["properties"][k] for k in ("os", "release", "variant", "architecture", "serial")} == {
        "os": "Debian",
        "release": "bookworm",
        "variant": "nocloud",
        "architecture": "amd64",
        "serial": "20261125-1",
    }

    for path in ("streams/v1/index.json", DAILIES):  # a storage whose catalogue was lost
        store.write(path, b"")
    backend = store.location.open(RetryPolicy(2, 0.01))
    with backend.locked("test"):
        catalogue.write(backend, anew=True)
    assert products(store)[PRODUCT]["versions"]["20261125-1"]["items"] == items, "the fingerprint is in the storage"


def test_the_metadata_tarball_is_the_same_bytes_for_the_same_image(test_matrix, tmp_path):
    cell = test_matrix.cell("bookworm-genericcloud-arm64")
    files = fake_outputs(tmp_path / "cell", cell, version="20261125-1")
    manifest.write(cell, files)
    record = Manifest.read(files.manifest)
    first, second = tmp_path / "first.tar.xz", tmp_path / "second.tar.xz"
    incus.write_tarball(first, cell, record)
    incus.write_tarball(second, cell, record)
    assert first.read_bytes() == second.read_bytes()
    with tarfile.open(first) as tar:
        member = tar.getmember("metadata.yaml")
        assert (member.uid, member.gid, member.uname, member.mode) == (0, 0, "root", 0o644)
        assert yaml.safe_load(tar.extractfile(member).read())["architecture"] == "aarch64"  # type: ignore[union-attr]  # a file member


def test_only_image_formats_are_images():
    assert publication.is_image("debian-12-nocloud-amd64-20261125-1.tar.xz")
    assert publication.is_image("debian-12-azure-amd64-20261125-1.vhd.tar.xz")
    tarball = "debian-12-nocloud-amd64-20261125-1.incus.tar.xz"
    assert not publication.is_image(tarball), "ends in .tar.xz, but is the VM's metadata"
    assert publication.has_sha256(tarball) and not publication.has_sha256("debian-12-nocloud-amd64-20261125-1.json")
    assert not publication.is_image("notes.tar.xz"), "not a public name"


def test_the_storage_wins_over_what_was_listed(test_matrix, store, tmp_path):
    """A version without its SHA512SUMS (a publication cut short) is not listed; a listed file that is gone
    leaves the catalogue when it is written again; `doit catalogue`'s writing needs nothing but the storage."""
    published(test_matrix, store, tmp_path)
    store.write("bookworm/daily/20261126-1/debian-12-nocloud-amd64-20261126-1.qcow2", b"half a publication")
    backend = store.location.open(RetryPolicy(2, 0.01))
    with backend.locked("test"):
        listed = catalogue.write(backend)
    assert [(i.cell, i.version) for i in listed] == [("bookworm-nocloud-amd64", "20261125-1")]
    assert set(products(store)[PRODUCT]["versions"]) == {"20261125-1"}


def test_a_daily_deleted_by_retention_leaves_the_catalogue_and_the_index(test_matrix, store, tmp_path):
    keep_two = PublishSettings(keep_dailies=2, retries=2, retry_delay=0.01)
    published(test_matrix, store, tmp_path, versions=("20261125-1", "20261126-1", "20261127-1"), settings=keep_two)
    assert set(products(store)[PRODUCT]["versions"]) == {"20261126-1", "20261127-1"}
    release_page = store.read("bookworm/index.html").decode()
    assert "20261126-1" in release_page and "20261125-1" not in release_page


def test_doit_cleanup_takes_a_daily_out_of_the_catalogue_and_the_index(test_matrix, tmp_path):
    import dataclasses

    from tasks.model import plan as plan_module
    from tasks.release import cleanup

    store = local_store(tmp_path)
    published(test_matrix, store, tmp_path, versions=("20261125-1", "20261126-1", "20261127-1"))
    assert "20261125-1" in store.read("bookworm/index.html").decode()
    options = {"storage": store.location.url, "workdir": str(tmp_path / "w")}
    plan = plan_module.from_options(REPO, options.get)
    publish_settings = dataclasses.replace(plan.matrix.publish, keep_dailies=2)
    plan = dataclasses.replace(plan, matrix=dataclasses.replace(plan.matrix, publish=publish_settings), confirmed=True)
    [deleted] = cleanup.cleanup(plan)
    assert deleted.version == "20261125-1"
    assert set(products(store)[PRODUCT]["versions"]) == {"20261126-1", "20261127-1"}
    assert "20261125-1" not in store.read("bookworm/index.html").decode()


def simplestreams(tool: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / ".venv" / "bin" / tool) if (REPO / ".venv").exists() else tool, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_canonicals_client_finds_and_mirrors_the_image_from_nginx(test_matrix, tmp_path):
    nginx = servers.Nginx(tmp_path / "nginx").start()
    try:
        store = dav_store(nginx)
        published(test_matrix, store, tmp_path, versions=("20261125-1", "20261126-1"))
        streams = f"{nginx.url}/streams/v1/index.json"
        query = simplestreams(
            "sstream-query", "--json", "--max=1", streams, "release=bookworm", "arch=amd64", "ftype=disk1.img"
        )
        assert query.returncode == 0, query.stderr
        [found] = json.loads(query.stdout)
        assert (found["product_name"], found["version_name"], found["vendor"]) == (PRODUCT, "20261126-1", "nocloud")
        name = "debian-12-nocloud-amd64-20261126-1.qcow2"
        assert found["sha512"] == store.sums("bookworm/daily/20261126-1")[name]
        assert found["sha256"] == hashlib.sha256(store.read(f"bookworm/daily/20261126-1/{name}")).hexdigest()
        # By release, arch and version: the older one, which --max=1 left out above.
        older = simplestreams(
            "sstream-query", "--json", streams, "release=bookworm", "arch=amd64", "version_name=20261125-1"
        )
        assert older.returncode == 0, older.stderr
        assert {f["ftype"] for f in json.loads(older.stdout)} == {"disk1.img", "tar.xz", *VM_ITEMS}
        assert found["item_url"] == f"{nginx.url}/bookworm/daily/20261126-1/{name}"

        mirror = tmp_path / "mirror"
        done = simplestreams("sstream-mirror", "--no-verify", "--max=1", streams, str(mirror), "ftype=disk1.img")
        assert done.returncode == 0, done.stderr
        copied = mirror / "bookworm/daily/20261126-1" / name
        assert copied.read_bytes() == store.read(f"bookworm/daily/20261126-1/{name}"), "its checksum verified"
        assert not (mirror / "bookworm/daily/20261125-1").exists(), "--max=1: the newest version only"

        # A file changed behind the catalogue's back: the mirror refuses it.
        store.write(f"bookworm/daily/20261126-1/{name}", b"not what was published")
        again = simplestreams(
            "sstream-mirror", "--no-verify", "--max=1", streams, str(tmp_path / "m2"), "ftype=disk1.img"
        )
        assert again.returncode != 0 and "Checksum" in again.stderr
    finally:
        nginx.stop()


def doit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "doit", "-f", str(REPO / "dodo.py"), *args], capture_output=True, text=True, cwd=REPO
    )


def test_doit_catalogue_and_doit_images(test_matrix, tmp_path):
    store = local_store(tmp_path)
    common = [f"storage={store.location.url}", f"workdir={tmp_path / 'w'}"]
    none = doit("images", *common)
    assert none.returncode != 0 and f"{store.location.url} has no catalogue" in none.stdout + none.stderr
    published(test_matrix, store, tmp_path, ("bookworm-nocloud-amd64", "bookworm-genericcloud-amd64"))
    (tmp_path / "public" / "streams" / "v1" / "index.json").unlink()  # a storage filled before catalogues
    made = doit("catalogue", *common)
    assert made.returncode == 0 and "2 image versions" in made.stdout, made.stdout + made.stderr
    listed = doit("images", "cells=bookworm-nocloud-*", *common)
    assert listed.returncode == 0, listed.stderr
    # doit's own line for the task may come before or after the table: read the table's lines alone.
    header = ["release", "vendor", "arch", "stream", "version", "formats", "incus/lxd", "signed"]
    assert " ".join(header) in " ".join(listed.stdout.split()), listed.stdout
    rows = [line.split() for line in listed.stdout.splitlines() if line.startswith("bookworm ")]
    assert rows == [["bookworm", "nocloud", "amd64", "daily", "20261125-1", "disk1.img", "tar.xz", "vm", "no"]]


def test_a_damaged_catalogue_is_one_line_and_the_next_writing_mends_it(test_matrix, tmp_path):
    store = local_store(tmp_path)
    published(test_matrix, store, tmp_path)
    store.write(DAILIES, b"{not json")
    common = [f"storage={store.location.url}", f"workdir={tmp_path / 'w'}"]
    listed = doit("images", *common)
    assert listed.returncode != 0 and "Traceback" not in listed.stdout + listed.stderr
    assert "the catalogue cannot be read" in listed.stdout and "`doit catalogue` writes it again" in listed.stdout
    published(test_matrix, store, tmp_path, versions=("20261126-1",))  # a publication writes it anew
    assert set(products(store)[PRODUCT]["versions"]) == {"20261125-1", "20261126-1"}


def test_with_a_key_the_signed_catalogue_verifies_with_gpgv_and_simplestreams(test_matrix, tmp_path, signing_env):
    nginx = servers.Nginx(tmp_path / "nginx").start()
    try:
        store = dav_store(nginx)
        published(test_matrix, store, tmp_path)
        index = store.read("streams/v1/index.sjson").decode()
        assert index.startswith("-----BEGIN PGP SIGNED MESSAGE-----")
        assert "org.debian.cloud:daily:download.sjson" in index, "the signed index names the signed products"
        with signing.public_keyring(signing_env.public) as keyring:
            for path in ("streams/v1/index.sjson", "streams/v1/org.debian.cloud:daily:download.sjson"):
                signed = tmp_path / path.rsplit("/", 1)[1]
                signed.write_bytes(store.read(path))
                check = subprocess.run(["gpgv", f"--keyring={keyring}", str(signed)], capture_output=True, text=True)
                assert check.returncode == 0, check.stderr
            streams = f"{nginx.url}/streams/v1/index.sjson"
            query = simplestreams("sstream-query", "--json", f"--keyring={keyring}", streams, "ftype=disk1.img")
            assert query.returncode == 0, query.stderr
            assert [found["version_name"] for found in json.loads(query.stdout)] == ["20261125-1"]

            # One byte changed in the signed products: simplestreams' own check refuses it.
            products = "streams/v1/org.debian.cloud:daily:download.sjson"
            store.write(products, store.read(products).replace(b'"20261125-1"', b'"20261125-2"'))
            tampered = simplestreams("sstream-query", "--json", f"--keyring={keyring}", streams, "ftype=disk1.img")
            assert tampered.returncode != 0 and "gpgv" in tampered.stderr
    finally:
        nginx.stop()


@pytest.mark.skipif(not browser.have_chromium(), reason="Debian's chromium is installed by tools/setup-host")
def test_the_web_index_is_clicked_through_in_a_real_browser(test_matrix, tmp_path, signing_env):
    """From the root to a version's page and its SHA512SUMS, in headless Chromium, over nginx; no script."""
    nginx = servers.Nginx(tmp_path / "nginx").start()
    chromium = browser.Browser(tmp_path / "profile")
    try:
        store = dav_store(nginx)
        published(test_matrix, store, tmp_path, ("bookworm-nocloud-amd64", "bookworm-genericcloud-amd64"))
        published(test_matrix, store, tmp_path, ("bookworm-nocloud-amd64",), versions=("20261126-1",))
        chromium.open(f"{nginx.url}/index.html")
        assert "bookworm" in chromium.text and "20261126-1" in chromium.text, "the latest daily, from the root"
        chromium.click("bookworm")
        assert chromium.evaluate("location.pathname") == "/images/bookworm/index.html"
        rows = chromium.text
        assert rows.index("20261126-1") < rows.index("20261125-1"), "newest first"
        chromium.click("20261125-1")
        assert chromium.evaluate("location.pathname") == "/images/bookworm/daily/20261125-1/index.html"
        page = chromium.text
        sums = store.sums("bookworm/daily/20261125-1")
        for name in ("debian-12-nocloud-amd64-20261125-1", "debian-12-genericcloud-amd64-20261125-1"):
            assert name in page and sums[f"{name}.qcow2"] in page, "each image with its SHA-512"
        labels = ("SBOM (SPDX)", "SBOM (CycloneDX)", "changes", "provenance", "manifest", ".qcow2", ".tar.xz")
        for label in (*labels, "Incus/LXD metadata"):
            assert label in page, label
        assert "SHA512SUMS.asc" in page, "signed, with its signature"
        chromium.screenshot(tmp_path / "version-page.png")
        assert (tmp_path / "version-page.png").read_bytes().startswith(b"\x89PNG")
        chromium.click("SHA512SUMS")
        assert chromium.text.strip() == store.read("bookworm/daily/20261125-1/SHA512SUMS").decode().strip()
        assert chromium.evaluate("document.scripts.length") == 0
    finally:
        chromium.close()
        nginx.stop()


def test_a_publication_cut_before_its_catalogue_leaves_one_of_whole_versions(test_matrix, tmp_path, monkeypatch):
    store = local_store(tmp_path)
    published(test_matrix, store, tmp_path)
    real = catalogue.write

    def cut(*args, **kwargs):
        raise KeyboardInterrupt("stopped between the files and the catalogue")

    cell = test_matrix.cell("bookworm-nocloud-amd64")
    files = fake_outputs(tmp_path / "second", cell, version="20261126-1")
    manifest.write(cell, files)
    monkeypatch.setattr(catalogue, "write", cut)
    with pytest.raises(KeyboardInterrupt):
        publish(cell, files, store, tmp_path)
    assert store.sums("bookworm/daily/20261126-1"), "its files are published"
    assert set(products(store)[PRODUCT]["versions"]) == {"20261125-1"}, "the catalogue as it was: whole versions"
    monkeypatch.setattr(catalogue, "write", real)
    publish(cell, files, store, tmp_path)  # run again: nothing to upload, the catalogue written
    assert set(products(store)[PRODUCT]["versions"]) == {"20261125-1", "20261126-1"}
