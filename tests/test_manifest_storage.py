"""Manifest content and the storage layout, from small real files."""

import hashlib
import json
import os
import subprocess

import pytest

from tasks import atomic, manifest, storage
from tasks.errors import StageFailed
from tasks.storage import LocalStorage

from .conftest import fake_outputs


def sha512(path) -> str:
    return hashlib.sha512(path.read_bytes()).hexdigest()


@pytest.fixture
def nocloud(repo_matrix, tmp_path):
    cell = repo_matrix.cell("bookworm-nocloud-amd64")
    files = fake_outputs(tmp_path / "build", cell)
    manifest.write(cell, files)
    return cell, files


def test_manifest_describes_the_image(nocloud):
    cell, files = nocloud
    data = json.loads(files.manifest.read_text())
    assert data["name"] == "debian-12-nocloud-amd64-20261125-1200"
    assert data["release"] == {"codename": "bookworm", "version": "12"}
    assert (data["vendor"], data["arch"], data["version"]) == ("nocloud", "amd64", "20261125-1200")
    assert data["build"]["fai_classes"] == list(cell.fai_classes)
    assert data["build"]["started"] == "2026-11-25T12:00:00+00:00"
    assert [a["name"] for a in data["artifacts"]] == [
        "debian-12-nocloud-amd64-20261125-1200.tar.xz", "debian-12-nocloud-amd64-20261125-1200.qcow2"]
    for artifact in data["artifacts"]:
        path = files.artifact(artifact["format"])
        assert artifact["size"] == path.stat().st_size
        assert artifact["sha512"] == sha512(path)
    assert data["packages"] == [
        {"name": "base-files", "version": "12.4+deb12u8", "architecture": "amd64"},
        {"name": "bash", "version": "5.2.15-2+b7", "architecture": "amd64"},
    ]
    assert data["boot_test"]["passed"] is True
    assert [b["firmware"] for b in data["boot_test"]["boots"]] == ["bios", "uefi"]
    assert data["boot_test"]["boots"][0]["milestones"]["systemd"] == 17.0


def test_given_version_names_the_image(nocloud):
    cell, files = nocloud
    data = manifest.describe(cell, files, version="20261201-1")
    assert data["name"] == "debian-12-nocloud-amd64-20261201-1" and data["version"] == "20261201-1"
    assert data["artifacts"][0]["name"] == "debian-12-nocloud-amd64-20261201-1.tar.xz"


def test_no_manifest_for_an_image_that_failed_its_boot_test(nocloud):
    cell, files = nocloud
    files.boot_result.write_text(json.dumps({"verdict": "kernel-panic", "passed": False}))
    with pytest.raises(StageFailed, match="boot test did not pass \\(kernel-panic"):
        manifest.describe(cell, files)


def test_malformed_package_list_names_the_line(nocloud):
    cell, files = nocloud
    files.packages.write_text("bash\t5.2\tamd64\nbroken line\n")
    with pytest.raises(ValueError, match=r"packages.tsv:2: expected name<TAB>version<TAB>architecture"):
        manifest.describe(cell, files)


def test_publish_layout_and_checksums(nocloud, tmp_path):
    cell, files = nocloud
    store = LocalStorage(tmp_path / "storage")
    receipt = storage.publish(cell, files, store)

    directory = tmp_path / "storage" / "bookworm" / "20261125-1200"
    names = sorted(p.name for p in directory.iterdir() if not p.name.startswith("."))
    image = "debian-12-nocloud-amd64-20261125-1200"
    assert names == sorted(["SHA512SUMS", f"{image}.tar.xz", f"{image}.qcow2", f"{image}.json"])
    check = subprocess.run(["sha512sum", "--check", "--strict", "SHA512SUMS"], cwd=directory,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.count(": OK") == 3
    assert (directory / f"{image}.json").read_bytes() == files.manifest.read_bytes()
    assert receipt == atomic.read_json(files.published)
    assert receipt["directory"] == "bookworm/20261125-1200"
    assert storage.still_published(str(files.published), str(store.root))


def test_publish_twice_copies_nothing(nocloud, tmp_path):
    cell, files = nocloud
    store = LocalStorage(tmp_path / "storage")
    storage.publish(cell, files, store)
    directory = store.version_dir("bookworm", "20261125-1200")
    before = {p.name: p.stat().st_mtime_ns for p in directory.iterdir() if p.name != "SHA512SUMS"}
    storage.publish(cell, files, store)
    after = {p.name: p.stat().st_mtime_ns for p in directory.iterdir() if p.name != "SHA512SUMS"}
    assert before == after


def test_cells_of_a_release_share_sha512sums(repo_matrix, tmp_path):
    store = LocalStorage(tmp_path / "storage")
    for name in ("bookworm-nocloud-amd64", "bookworm-genericcloud-amd64"):
        cell = repo_matrix.cell(name)
        files = fake_outputs(tmp_path / "build", cell)
        manifest.write(cell, files)
        storage.publish(cell, files, store)
    sums = (store.version_dir("bookworm", "20261125-1200") / "SHA512SUMS").read_text()
    assert sums.count("debian-12-nocloud-amd64") == 3 and sums.count("debian-12-genericcloud-amd64") == 3


def test_interrupted_publish_leaves_previous_state(nocloud, tmp_path, monkeypatch):
    cell, files = nocloud
    store = LocalStorage(tmp_path / "storage")
    storage.publish(cell, files, store)
    directory = store.version_dir("bookworm", "20261125-1200")
    sums_before = (directory / "SHA512SUMS").read_text()
    files_before = {p.name: p.read_bytes() for p in directory.iterdir()}

    # A rebuilt image whose copy is cut short after the first file.
    files.artifact("tar.xz").write_bytes(b"new tar" * 100)
    files.artifact("qcow2").write_bytes(b"new qcow2" * 100)
    manifest.write(cell, files)
    real_replace = os.replace
    calls = []

    def interrupted_replace(src, dst):
        calls.append(dst)
        if len(calls) == 3:  # 1: SHA512SUMS loses the entries to replace, 2: the tar.xz
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", interrupted_replace)
    with pytest.raises(KeyboardInterrupt):
        storage.publish(cell, files, store)
    monkeypatch.setattr(os, "replace", real_replace)

    assert not [p for p in directory.iterdir() if ".partial" in p.name], "no partial file may remain"
    # SHA512SUMS lists only files that are present and match it...
    listed = store.sums(directory)
    for name, digest in listed.items():
        assert sha512(directory / name) == digest, name
    # ... and the file replaced before the interruption is no longer among them.
    replaced = [n for n, data in files_before.items()
                if n != "SHA512SUMS" and (directory / n).read_bytes() != data]
    assert replaced == ["debian-12-nocloud-amd64-20261125-1200.tar.xz"]
    assert replaced[0] not in listed and replaced[0] in sums_before
    # A rerun completes the publication.
    storage.publish(cell, files, store)
    check = subprocess.run(["sha512sum", "--check", "--strict", "SHA512SUMS"], cwd=directory,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout


def test_changed_source_is_refused(nocloud, tmp_path):
    cell, files = nocloud
    files.artifact("qcow2").write_bytes(b"tampered after the manifest")
    with pytest.raises(storage.PublishFailed, match="changed since its manifest"):
        storage.publish(cell, files, LocalStorage(tmp_path / "storage"))
    directory = tmp_path / "storage" / "bookworm" / "20261125-1200"
    assert not (directory / "SHA512SUMS").exists()


def test_removed_publication_is_not_up_to_date(nocloud, tmp_path):
    cell, files = nocloud
    store = LocalStorage(tmp_path / "storage")
    storage.publish(cell, files, store)
    next(store.version_dir("bookworm", "20261125-1200").glob("*.qcow2")).unlink()
    assert not storage.still_published(str(files.published), str(store.root))


@pytest.mark.parametrize("location, expected", [
    ("storage", "BASE/storage"), ("/srv/images", "/srv/images"), ("file:///srv/images", "/srv/images")])
def test_storage_locations(tmp_path, location, expected):
    store = LocalStorage.from_location(location, tmp_path)
    assert str(store.root) == expected.replace("BASE", str(tmp_path))


def test_unsupported_storage_url(tmp_path):
    with pytest.raises(ValueError, match="expected a directory or a file:// URL"):
        LocalStorage.from_location("ftp://example.org/images", tmp_path)
