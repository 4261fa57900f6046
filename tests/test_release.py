"""The release step, piece by piece, against real servers on loopback.

- EC2: boto3 against moto's AWS emulator over a real socket (tests/aws_emulator.py
  adds the snapshot import moto lacks);
- Azure: the page blob goes to Azurite, Microsoft's storage emulator; Resource
  Manager has no emulator, so its request is checked as a recording server got it;
- GCE: no emulator either: the upload and the image request are checked as a
  recording server got them;
- storage: nginx's WebDAV; notification: aiosmtpd's SMTP server and a webhook.

The instance test that boots a real image is in test_end_to_end.py (slow).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from datetime import UTC
from pathlib import Path

import boto3
import pytest

from tasks import storage
from tasks.errors import StageFailed
from tasks.model.matrix import BootTestSettings, PublishSettings, ReleaseSettings
from tasks.model.records import Manifest
from tasks.model.settings import AzureSettings, Ec2Settings, GceSettings, NotifySettings
from tasks.release import notify
from tasks.release import step as release
from tasks.release.platforms import azure, ec2, gce
from tasks.stages import compress, manifest
from tasks.system import signing

from . import servers
from .conftest import KeyFiles, fake_outputs

REPO = Path(__file__).resolve().parent.parent
VERSION = "20261125-1200"
FAST = PublishSettings(keep_dailies=14, retries=2, retry_delay=0.01)
BOOT = BootTestSettings(timeout=60, memory=512, cpus=1, accelerator="auto", until="login")


@pytest.fixture(autouse=True)
def release_key(signing_env) -> KeyFiles:
    """Releases are signed: every release here has the test key (one test takes it away)."""
    return signing_env


def sha512(data: bytes) -> str:
    return hashlib.sha512(data).hexdigest()


def with_real_disk(tmp_path: Path, files, fmt: str | None = None) -> bytes:
    """Give a cell a small sparse raw disk (and, when fmt says so, that artifact made from it)."""
    with open(files.raw, "wb") as f:
        f.truncate(16 << 20)
        for offset in (0, 9 << 20):
            f.seek(offset)
            f.write(os.urandom(256 << 10))
    if fmt == "tar.xz":
        compress.sparse_tar(files.raw, files.artifact(fmt), compress.xz(0), label="test", fixed=1)
    elif fmt == "vhd.tar.xz":
        compress.vhd_tar_xz(files.raw, files.artifact(fmt), compress.xz(0), label="test", fixed=1)
    return files.raw.read_bytes()


def cell_with_manifest(test_matrix, tmp_path, name):
    cell = test_matrix.cell(name)
    files = fake_outputs(tmp_path / "build", cell, version=VERSION)
    return cell, files


# --------------------------------------------------------------------------
# The whole step, without a platform: publication as a release, notification


@pytest.fixture
def mailbox():
    box = servers.Mailbox().start()
    yield box
    box.stop()


@pytest.fixture
def webhook():
    server = servers.RecordingServer().start()
    yield server
    server.stop()


@pytest.mark.skipif(not servers.have_nginx(), reason="nginx with WebDAV is installed by tools/setup-host")
def test_release_publishes_a_version_directory_then_latest_and_notifies(
    test_matrix, tmp_path, mailbox, webhook, release_key
):
    cell, files = cell_with_manifest(test_matrix, tmp_path, "bookworm-nocloud-amd64")
    manifest.write(cell, files)
    nginx = servers.Nginx(tmp_path / "nginx").start()
    try:
        settings = ReleaseSettings(
            instance_test=(),
            notify=NotifySettings(
                to=("cloud-team@example.org",),
                sender="images@example.org",
                smtp_host="127.0.0.1",
                smtp_port=mailbox.port,
                webhook=webhook.url + "/hook",
            ),
        )
        record = release.release(
            cell, files, True, storage.Location(nginx.url), FAST, settings, BOOT, tmp_path / "locks"
        )
        root = nginx.root / "images" / "bookworm"
        published = root / VERSION
        image = f"debian-12-nocloud-amd64-{VERSION}"
        suffixes = ("tar.xz", "qcow2", "json", "spdx.json", "cdx.json", "intoto.json", "changes.json", "changes.txt")
        assert {p.name for p in published.iterdir()} == {
            "SHA512SUMS",
            "SHA512SUMS.asc",
            *(f"{image}.{suffix}" for suffix in suffixes),
        }
        check = subprocess.run(
            ["sha512sum", "--check", "--strict", "SHA512SUMS"], cwd=published, capture_output=True, text=True
        )
        assert check.returncode == 0 and check.stdout.count(": OK") == len(suffixes), check.stdout + check.stderr
        # Signed with the release key; a user checks it with gpgv and the public key.
        with signing.public_keyring(release_key.public) as keyring:
            assert signing.verify_detached(keyring, published / "SHA512SUMS.asc", published / "SHA512SUMS") is None
        assert record["published"]["signed_by"] == release_key.fingerprint
        assert (root / "latest").read_text() == f"{VERSION}\n"
        assert not (root / "daily").exists(), "a release is not a daily"
        assert json.loads(files.release_record.read_text()) == record
        assert record["published"]["directory"] == f"bookworm/{VERSION}"

        # One mail, saying what, where and which checksums.
        [(sender, recipients, mail)] = mailbox.messages
        assert (sender, recipients) == ("images@example.org", ["cloud-team@example.org"])
        assert mail["Subject"] == f"Debian bookworm cloud images {VERSION} released"
        text = mail.get_content()
        for artifact in json.loads(files.manifest.read_text())["artifacts"]:
            assert f"{nginx.url}/bookworm/{VERSION}/{artifact['name']}" in text
            assert artifact["sha512"] in text
        # The webhook got the same facts as JSON.
        [hook] = webhook.requests
        assert hook.method == "POST" and hook.path == "/hook"
        sent = json.loads(hook.body)
        assert sent["release"] == "bookworm" and sent["version"] == VERSION
        assert sent["cells"][0]["files"][f"{image}.tar.xz"] == sha512(files.artifact("tar.xz").read_bytes())
        assert record["notified"] == ["mail to cloud-team@example.org", "webhook"]
    finally:
        nginx.stop()


def test_release_is_refused_without_confirmation(tmp_path):
    """Through doit: the release task fails at once, builds nothing, publishes nothing."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "doit",
            "-f",
            str(REPO / "dodo.py"),
            "release:bookworm-nocloud-amd64",
            f"workdir={tmp_path / 'build'}",
            f"storage={tmp_path / 'storage'}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "doit release:bookworm-nocloud-amd64 confirm=yes" in result.stdout + result.stderr
    assert not (tmp_path / "storage").exists()
    assert not (tmp_path / "build" / "bookworm-nocloud-amd64").exists()


def test_release_tasks_are_in_no_group_and_no_default_run(test_matrix, tmp_path):
    from tasks import graph, registry
    from tasks.model import plan

    confirmed = plan.from_options(
        REPO, {"workdir": str(tmp_path), "confirm": "yes", "matrix": str(REPO / "tests" / "data" / "matrix.yaml")}.get
    )
    tasks = list(graph.stage_tasks(confirmed, registry.RELEASE))
    group = [t for t in tasks if t["name"] is None]
    assert group == [{"name": None, "doc": "release cells by name only (confirm=yes)", "task_dep": []}]
    one = next(t for t in tasks if t["name"] == "bookworm-genericcloud-amd64")
    assert str(tmp_path / "bookworm-genericcloud-amd64" / "manifest.json") in one["file_dep"]
    assert one["targets"] == [str(tmp_path / "bookworm-genericcloud-amd64" / "release.json")]


@pytest.mark.skipif(os.geteuid() != 0, reason="qemu-img and mkfs.vfat as root, like the release job")
def test_nothing_is_published_when_the_instance_test_fails(test_matrix, tmp_path, mailbox):
    """A disk that does not boot: the instance test fails on its deadline, naming the console log,
    and the release stops there: no platform upload, nothing in storage, no mail."""
    cell, files = cell_with_manifest(test_matrix, tmp_path, "bookworm-genericcloud-amd64")
    with_real_disk(tmp_path, files)
    manifest.write(cell, files)
    settings = ReleaseSettings(
        instance_test=("genericcloud",),
        instance_test_timeout=15,
        notify=NotifySettings(
            to=("cloud-team@example.org",),
            sender="images@example.org",
            smtp_host="127.0.0.1",
            smtp_port=mailbox.port,
        ),
    )
    location = storage.Location((tmp_path / "public").as_uri())
    expected = "bookworm-genericcloud-amd64: the instance test failed: SSH did not answer within 15 s"
    with pytest.raises(StageFailed, match=expected) as caught:
        release.release(cell, files, True, location, FAST, settings, BOOT, tmp_path / "locks")
    assert str(files.dir / "instance-test-console.log") in str(caught.value)
    assert (files.dir / "instance-test-console.log").exists()
    assert not (tmp_path / "public").exists()
    assert mailbox.messages == []
    assert not files.release_record.exists()
    assert not [p for p in files.dir.iterdir() if p.name.startswith("instance-test-") and p.is_dir()], (
        "the scratch directory (overlay disk, seed, SSH key) is gone"
    )


# --------------------------------------------------------------------------
# Notification failures


def test_an_unreachable_mail_server_is_a_clear_failure(tmp_path):
    message = {"release": "bookworm", "version": VERSION, "url": "file:///srv/images/bookworm/x", "cells": []}
    port = servers.free_port()  # nothing listens there
    with pytest.raises(notify.NotifyFailed, match=f"sending the release mail through 127.0.0.1:{port}"):
        notify.notify(
            message,
            NotifySettings(to=("a@example.org",), sender="b@example.org", smtp_host="127.0.0.1", smtp_port=port),
        )


def test_a_webhook_error_is_a_clear_failure_that_names_no_secret(monkeypatch):
    server = servers.RecordingServer(lambda request, _: (403, {}, b"")).start()
    try:
        monkeypatch.setenv("IMAGES_WEBHOOK_URL", server.url + "/hooks/s3cr3t-token")
        message = {"release": "bookworm", "version": VERSION, "url": "file:///x", "cells": []}
        with pytest.raises(notify.NotifyFailed) as caught:
            notify.notify(message, NotifySettings())
        assert "HTTP 403" in str(caught.value) and "s3cr3t" not in str(caught.value)
    finally:
        server.stop()


# --------------------------------------------------------------------------
# EC2 against moto, over a real socket


@pytest.fixture(scope="module")
def aws():
    from . import aws_emulator

    aws_emulator.install()
    server = servers.Moto().start()
    yield server
    server.stop()


@pytest.fixture
def aws_env(aws, monkeypatch):
    for key, value in aws.env().items():
        monkeypatch.setenv(key, value)
    return aws


@pytest.mark.parametrize("public", [False, True])
def test_ec2_upload_imports_a_snapshot_and_registers_a_tagged_ami(test_matrix, tmp_path, aws_env, public):
    cell, files = cell_with_manifest(test_matrix, tmp_path, "bookworm-ec2-amd64")
    with_real_disk(tmp_path, files)
    manifest.write(cell, files)
    bucket = _bucket(f"imports-{public}".lower())
    made = ec2.upload(
        cell,
        files,
        Manifest.read(files.manifest),
        Ec2Settings(region="us-east-1", bucket=bucket, prefix="debian", public=public),
    )
    client = boto3.client("ec2", region_name="us-east-1")
    [image] = client.describe_images(ImageIds=[made["ami"]])["Images"]
    assert image["Name"] == f"debian-12-ec2-amd64-{VERSION}"
    assert image["Architecture"] == "x86_64"
    assert image["RootDeviceName"] == "/dev/xvda"
    assert image["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"] == made["snapshot"]
    tags = {t["Key"]: t["Value"] for t in image["Tags"]}
    assert tags["debian:release"] == "bookworm" and tags["debian:version"] == VERSION
    attributes = client.describe_image_attribute(ImageId=made["ami"], Attribute="launchPermission")
    assert ({"Group": "all"} in attributes["LaunchPermissions"]) is public
    snapshot_tags = client.describe_snapshots(SnapshotIds=[made["snapshot"]])["Snapshots"][0].get("Tags", [])
    assert {"Key": "debian:vendor", "Value": "ec2"} in snapshot_tags
    objects = boto3.client("s3").list_objects_v2(Bucket=bucket).get("Contents", [])
    assert objects == [], "the uploaded disk is deleted once the snapshot holds it"
    assert made == {
        "platform": "ec2",
        "region": "us-east-1",
        "ami": made["ami"],
        "snapshot": made["snapshot"],
        "public": public,
    }


def test_a_release_run_again_after_a_failure_does_not_upload_twice(test_matrix, tmp_path, aws_env):
    """The mail server is down: the release fails after the AMI and the publication; run again,
    it registers no second AMI, publishes nothing twice and sends the mail."""
    cell, files = cell_with_manifest(test_matrix, tmp_path, "bookworm-ec2-amd64")
    with_real_disk(tmp_path, files)
    manifest.write(cell, files)
    bucket = _bucket("imports-rerun")
    port = servers.free_port()
    settings = ReleaseSettings(
        instance_test=(),
        platforms={"ec2": Ec2Settings(region="us-east-1", bucket=bucket)},
        notify=NotifySettings(
            to=("cloud-team@example.org",),
            sender="images@example.org",
            smtp_host="127.0.0.1",
            smtp_port=port,
        ),
    )
    location = storage.Location((tmp_path / "public").as_uri())
    client = boto3.client("ec2", region_name="us-east-1")
    before = len(client.describe_images(Owners=["self"])["Images"])
    with pytest.raises(notify.NotifyFailed):
        release.release(cell, files, True, location, FAST, settings, BOOT, tmp_path / "locks")
    assert not files.release_record.exists()
    assert len(client.describe_images(Owners=["self"])["Images"]) == before + 1
    published = tmp_path / "public" / "bookworm" / VERSION
    assert (published / "SHA512SUMS").exists()

    box = servers.Mailbox(port).start()  # the mail server is back
    try:
        record = release.release(cell, files, True, location, FAST, settings, BOOT, tmp_path / "locks")
    finally:
        box.stop()
    assert len(client.describe_images(Owners=["self"])["Images"]) == before + 1, "no second AMI"
    assert len(box.messages) == 1 and record["platforms"][0]["ami"] in box.messages[0][2].get_content()
    assert json.loads(files.release_record.read_text()) == record
    assert not (files.dir / "release-progress.json").exists()


def test_ec2_register_request_carries_boot_mode_and_network_flags(test_matrix):
    amd64 = ec2.register_request(test_matrix.cell("trixie-ec2-amd64"), "n", "snap-1", "d")
    arm64 = ec2.register_request(test_matrix.cell("trixie-ec2-arm64"), "n", "snap-1", "d")
    assert (amd64["Architecture"], amd64["BootMode"]) == ("x86_64", "uefi-preferred")
    assert (arm64["Architecture"], arm64["BootMode"]) == ("arm64", "uefi")
    for request in (amd64, arm64):
        assert request["EnaSupport"] is True and request["SriovNetSupport"] == "simple"
        assert request["VirtualizationType"] == "hvm" and request["ImdsSupport"] == "v2.0"


def test_ec2_upload_from_the_tar_xz_when_the_raw_disk_is_gone(test_matrix, tmp_path, aws_env):
    """A CI release job has the artifacts, not disk.raw: the disk comes out of image.tar.xz."""
    cell, files = cell_with_manifest(test_matrix, tmp_path, "bookworm-ec2-amd64")
    with_real_disk(tmp_path, files, "tar.xz")
    files.raw.unlink()
    manifest.write(cell, files)
    _bucket("imports-from-tar")
    made = ec2.upload(
        cell, files, Manifest.read(files.manifest), Ec2Settings(region="us-east-1", bucket="imports-from-tar")
    )
    snapshot = boto3.client("ec2", region_name="us-east-1").describe_snapshots(SnapshotIds=[made["snapshot"]])[
        "Snapshots"
    ][0]
    assert snapshot["State"] == "completed"
    assert not [p for p in files.dir.iterdir() if p.name.startswith("release-")], "the scratch space is gone"


def test_ec2_with_a_missing_bucket_fails_clearly(test_matrix, tmp_path, aws_env):
    cell, files = cell_with_manifest(test_matrix, tmp_path, "bookworm-ec2-amd64")
    with_real_disk(tmp_path, files)
    manifest.write(cell, files)
    with pytest.raises(StageFailed, match="uploading disk.vmdk to s3://no-such-bucket/.*NoSuchBucket"):
        ec2.upload(
            cell,
            files,
            Manifest.read(files.manifest),
            Ec2Settings(region="us-east-1", bucket="no-such-bucket"),
        )


def _bucket(name: str) -> str:
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=name)
    return name


# --------------------------------------------------------------------------
# Azure: blob storage in Azurite, Resource Manager's request as recorded


@pytest.mark.skipif(not servers.have_azurite(), reason="Azurite (npm) is installed by tools/setup-host")
def test_azure_upload_writes_a_page_blob_and_asks_for_a_generation_2_image(test_matrix, tmp_path, monkeypatch):
    from datetime import datetime, timedelta

    from azure.storage.blob import BlobServiceClient, ContainerSasPermissions, generate_container_sas

    cell, files = cell_with_manifest(test_matrix, tmp_path, "bookworm-azure-amd64")
    with_real_disk(tmp_path, files, "vhd.tar.xz")
    manifest.write(cell, files)
    vhd = tmp_path / "expected"
    vhd.mkdir()
    subprocess.run(
        ["tar", "--extract", "--sparse", "--file", str(files.artifact("vhd.tar.xz")), "--directory", str(vhd)],
        check=True,
    )
    expected = (vhd / "disk.vhd").read_bytes()

    blob_server = servers.Azurite(tmp_path / "azurite").start()

    def arm(request, server):
        if request.method == "PUT":
            return (
                201,
                {"Azure-AsyncOperation": server.url + "/operations/1"},
                json.dumps(
                    {"id": "/subscriptions/sub-1/resourceGroups/images/providers/Microsoft.Compute/images/x"}
                ).encode(),
            )
        return 200, {}, b'{"status": "Succeeded"}'

    management = servers.RecordingServer(arm).start()
    try:
        service = BlobServiceClient.from_connection_string(blob_server.connection_string)
        service.create_container("images")
        sas = generate_container_sas(
            servers.Azurite.ACCOUNT,
            "images",
            account_key=servers.Azurite.KEY,
            permission=ContainerSasPermissions(read=True, write=True, create=True),
            expiry=datetime.now(UTC) + timedelta(hours=1),
        )
        monkeypatch.setenv("AZURE_STORAGE_SAS", sas)
        monkeypatch.setenv("AZURE_ACCESS_TOKEN", "arm-token")
        settings = AzureSettings(
            subscription="sub-1",
            resource_group="images",
            location="westeurope",
            container_url=f"{blob_server.url}/images",
            api_endpoint=management.url,
        )
        made = azure.upload(cell, files, Manifest.read(files.manifest), settings)

        name = f"debian-12-azure-amd64-{VERSION}.vhd"
        blob = service.get_blob_client("images", name)
        assert blob.get_blob_properties().blob_type == "PageBlob"
        assert blob.download_blob().readall() == expected
        assert made["blob"] == f"{blob_server.url}/images/{name}"

        put, poll = management.requests
        assert put.method == "PUT" and put.path == (
            f"/subscriptions/sub-1/resourceGroups/images/providers/Microsoft.Compute/images/"
            f"debian-12-azure-amd64-{VERSION}?api-version={azure.COMPUTE_API}"
        )
        assert put.headers["Authorization"] == "Bearer arm-token"
        body = json.loads(put.body)
        assert body["location"] == "westeurope"
        assert body["properties"]["hyperVGeneration"] == "V2"
        assert body["properties"]["storageProfile"]["osDisk"] == {
            "osType": "Linux",
            "osState": "Generalized",
            "blobUri": made["blob"],
            "caching": "ReadWrite",
            "storageAccountType": "Standard_LRS",
        }
        assert (poll.method, poll.path) == ("GET", "/operations/1")
    finally:
        management.stop()
        blob_server.stop()


def test_azure_pages_cover_only_the_data(tmp_path):
    disk = tmp_path / "disk.vhd"
    with open(disk, "wb") as f:
        f.truncate(64 << 20)
        f.seek(10 << 20)
        f.write(b"x" * 100)
    pages = azure.data_pages(disk)
    assert pages == [(8 << 20, 4 << 20)]


def test_azure_without_credentials_names_what_is_missing(test_matrix, tmp_path, monkeypatch):
    cell, files = cell_with_manifest(test_matrix, tmp_path, "bookworm-azure-amd64")
    manifest.write(cell, files)
    monkeypatch.delenv("AZURE_STORAGE_SAS", raising=False)
    with pytest.raises(StageFailed, match="AZURE_STORAGE_SAS is not set"):
        azure.upload(
            cell,
            files,
            Manifest.read(files.manifest),
            AzureSettings(
                subscription="s", resource_group="g", location="l", container_url="http://127.0.0.1:9/images"
            ),
        )


# --------------------------------------------------------------------------
# GCE: Cloud Storage and the Compute API, as a recording server sees them


def test_gce_upload_sends_the_tar_gz_then_asks_for_an_image(test_matrix, tmp_path, monkeypatch):
    cell, files = cell_with_manifest(test_matrix, tmp_path, "trixie-gce-arm64")
    manifest.write(cell, files)
    state = {"polls": 0}

    def google(request, server):
        if request.path.startswith("/upload/storage/v1/b/"):
            return 200, {}, b'{"name": "uploaded"}'
        if request.method == "POST":
            return (
                200,
                {},
                json.dumps(
                    {
                        "name": "op-1",
                        "status": "RUNNING",
                        "selfLink": server.url + "/compute/v1/projects/p/global/operations/op-1",
                    }
                ).encode(),
            )
        state["polls"] += 1
        return 200, {}, json.dumps({"name": "op-1", "status": "DONE" if state["polls"] > 1 else "RUNNING"}).encode()

    server = servers.RecordingServer(google).start()
    try:
        monkeypatch.setenv("GOOGLE_OAUTH_ACCESS_TOKEN", "gce-token")
        settings = GceSettings(
            project="p",
            bucket="imports",
            family="debian-13",
            api_endpoint=server.url,
            storage_endpoint=server.url,
            poll_seconds=0,
        )
        made = gce.upload(cell, files, Manifest.read(files.manifest), settings)
        upload, insert, *polls = server.requests
        name = f"debian-13-gce-arm64-{VERSION}".lower()
        assert upload.method == "POST" and upload.path == (
            f"/upload/storage/v1/b/imports/o?uploadType=media&name={name}.tar.gz"
        )
        assert upload.body == files.artifact("tar.gz").read_bytes()
        assert upload.headers["Authorization"] == "Bearer gce-token"
        assert insert.path == "/compute/v1/projects/p/global/images"
        body = json.loads(insert.body)
        assert body["name"] == name
        assert body["rawDisk"] == {"source": f"https://storage.googleapis.com/imports/{name}.tar.gz"}
        assert body["architecture"] == "ARM64" and body["family"] == "debian-13-arm64"
        assert {"type": "UEFI_COMPATIBLE"} in body["guestOsFeatures"]
        assert {"type": "SEV_CAPABLE"} not in body["guestOsFeatures"], "SEV is amd64 only"
        assert len(polls) == 2 and all(p.method == "GET" for p in polls)
        assert made == {
            "platform": "gce",
            "project": "p",
            "image": name,
            "family": "debian-13-arm64",
            "object": f"gs://imports/{name}.tar.gz",
        }
    finally:
        server.stop()


def test_gce_api_errors_are_reported_with_the_answer(test_matrix, tmp_path, monkeypatch):
    cell, files = cell_with_manifest(test_matrix, tmp_path, "bookworm-gce-amd64")
    manifest.write(cell, files)
    server = servers.RecordingServer(lambda request, _: (403, {}, b'{"error": "bucket imports: forbidden"}')).start()
    try:
        monkeypatch.setenv("GOOGLE_OAUTH_ACCESS_TOKEN", "gce-token")
        with pytest.raises(StageFailed, match="uploading to Cloud Storage: HTTP 403 .*forbidden") as caught:
            gce.upload(
                cell,
                files,
                Manifest.read(files.manifest),
                GceSettings(project="p", bucket="imports", storage_endpoint=server.url),
            )
        assert "gce-token" not in str(caught.value)
    finally:
        server.stop()


def test_a_release_without_a_signing_key_is_refused_before_anything_runs(test_matrix, tmp_path, monkeypatch):
    cell, files = cell_with_manifest(test_matrix, tmp_path, "bookworm-nocloud-amd64")
    manifest.write(cell, files)
    monkeypatch.delenv(signing.KEY_ENV)
    monkeypatch.delenv(signing.FINGERPRINT_ENV)
    location = storage.Location((tmp_path / "public").as_uri())
    with pytest.raises(release.ReleaseRefused, match=f"a release is signed: set {signing.KEY_ENV}"):
        release.release(cell, files, True, location, FAST, ReleaseSettings(), BOOT, tmp_path / "locks")
    assert not (tmp_path / "public").exists() and not files.release_progress.exists()
