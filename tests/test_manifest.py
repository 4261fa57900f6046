"""Manifest content, from small real files."""

import hashlib
import json

import pytest

from tasks.errors import StageFailed
from tasks.stages import manifest


def sha512(path) -> str:
    return hashlib.sha512(path.read_bytes()).hexdigest()


def test_manifest_describes_the_image(nocloud):
    cell, files = nocloud
    data = json.loads(files.manifest.read_text())
    assert data["name"] == "debian-12-nocloud-amd64-20261125-1200"
    assert data["release"] == {"codename": "bookworm", "version": "12"}
    assert (data["vendor"], data["arch"], data["version"]) == ("nocloud", "amd64", "20261125-1200")
    assert data["build"]["fai_classes"] == list(cell.fai_classes)
    assert data["build"]["started"] == "2026-11-25T12:00:00+00:00"
    assert [a["name"] for a in data["artifacts"]] == [
        "debian-12-nocloud-amd64-20261125-1200.tar.xz",
        "debian-12-nocloud-amd64-20261125-1200.qcow2",
    ]
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
    described = manifest.describe(cell, files, version="20261201-1")
    assert described.name == "debian-12-nocloud-amd64-20261201-1" and described.version == "20261201-1"
    assert described.artifacts[0]["name"] == "debian-12-nocloud-amd64-20261201-1.tar.xz"


def test_no_manifest_for_an_image_that_failed_its_boot_test(nocloud):
    cell, files = nocloud
    files.boot_result.write_text(
        json.dumps({"cell": cell.name, "verdict": "kernel-panic", "passed": False, "boots": []})
    )
    with pytest.raises(StageFailed, match="boot test did not pass \\(kernel-panic") as caught:
        manifest.describe(cell, files)
    assert str(files.boot_log("bios")) in str(caught.value), "it names the console log to read"


def test_malformed_package_list_names_the_line(nocloud):
    cell, files = nocloud
    files.packages.write_text("bash\t5.2\tamd64\nbroken line\n")
    with pytest.raises(manifest.ManifestFailed, match=r"packages.tsv:2: expected name<TAB>version<TAB>architecture"):
        manifest.describe(cell, files)


def test_a_record_of_another_version_or_incomplete_is_one_clear_line(nocloud):
    cell, files = nocloud
    data = json.loads(files.build_info.read_text())
    files.build_info.write_text(json.dumps({**data, "record": "build-info/7"}))
    with pytest.raises(StageFailed) as caught:
        manifest.describe(cell, files)
    assert str(caught.value) == (
        f"{files.build_info}: a build-info/7 record, expected build-info/2: make it again with this version"
    )
    del data["mirror"]
    files.build_info.write_text(json.dumps(data))
    with pytest.raises(StageFailed, match="the build-info record lacks mirror"):
        manifest.describe(cell, files)


def test_records_round_trip(nocloud):
    from tasks.model.records import BootRecord, BuildInfo, Manifest

    _, files = nocloud
    for kind, path in ((BuildInfo, files.build_info), (BootRecord, files.boot_result), (Manifest, files.manifest)):
        record = kind.read(path)
        assert kind.from_json(json.loads(json.dumps(record.to_json()))) == record
    assert BuildInfo.read(files.build_info).to_json()["record"] == "build-info/2"
    # The manifest is the public document: its JSON is as it always was, schema number first.
    assert list(Manifest.read(files.manifest).to_json())[:3] == ["schema", "name", "release"]
    assert json.loads(files.manifest.read_text()) == Manifest.read(files.manifest).to_json()
