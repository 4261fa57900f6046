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
from datetime import UTC, datetime
from pathlib import Path

import boto3
import pytest

from tasks import storage
from tasks.errors import StageFailed
from tasks.model.matrix import BootTestSettings, PublishSettings, ReleaseSettings
from tasks.model.records import Manifest
from tasks.model.settings import NotifySettings
from tasks.release import notify
from tasks.release import step as release
from tasks.release.platforms import azure, ec2, gce
from tasks.release.platforms.azure import AzureSettings
from tasks.release.platforms.ec2 import Ec2Settings
from tasks.release.platforms.gce import GceSettings
from tasks.stages import compress, manifest
from tasks.system import signing

from . import servers
from .conftest import KeyFiles, fake_outputs
from .test_storage import SUFFIXES

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
    with compress.Workers(1) as workers:
        if fmt == "tar.xz":
            compress.sparse_tar(files.raw, files.artifact(fmt), compress.xz(0), "test", workers)
        elif fmt == "vhd.tar.xz":
            compress.vhd_tar_xz(files.raw, files.artifact(fmt), compress.xz(0), "test", workers)
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
        record = release.release(cell, files, True, storage.Location(nginx.url), FAST, settings, BOOT)
        root = nginx.root / "images" / "bookworm"
        published = root / VERSION
        image = f"debian-12-nocloud-amd64-{VERSION}"
        assert {p.name for p in published.iterdir()} == {
            "SHA512SUMS",
            "SHA512SUMS.asc",
            "SHA256SUMS",
            "FINGERPRINTS",
            "index.html",
            *(f"{image}.{suffix}" for suffix in SUFFIXES),
        }
        check = subprocess.run(
            ["sha512sum", "--check", "--strict", "SHA512SUMS"], cwd=published, capture_output=True, text=True
        )
        assert check.returncode == 0 and check.stdout.count(": OK") == len(SUFFIXES), check.stdout + check.stderr
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
        release.release(cell, files, True, location, FAST, settings, BOOT)
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
        "regions": {"us-east-1": {"ami": made["ami"], "snapshot": made["snapshot"]}},
        "public": public,
        "deprecate_at": None,
        "ssm_parameters": {},
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
        release.release(cell, files, True, location, FAST, settings, BOOT)
    assert not files.release_record.exists()
    assert len(client.describe_images(Owners=["self"])["Images"]) == before + 1
    published = tmp_path / "public" / "bookworm" / VERSION
    assert (published / "SHA512SUMS").exists()

    box = servers.Mailbox(port).start()  # the mail server is back
    try:
        record = release.release(cell, files, True, location, FAST, settings, BOOT)
    finally:
        box.stop()
    assert len(client.describe_images(Owners=["self"])["Images"]) == before + 1, "no second AMI"
    assert len(box.messages) == 1 and record["platforms"][0]["ami"] in box.messages[0][2].get_content()
    assert json.loads(files.release_record.read_text()) == record
    assert not (files.dir / "release-progress.json").exists()


REGIONS = ("us-east-1", "eu-west-1", "ap-southeast-2")


def _images_named(name: str, region: str) -> list[dict]:
    client = boto3.client("ec2", region_name=region)
    return client.describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": [name]}])["Images"]


def test_ec2_release_reaches_every_region_public_deprecated_and_resolvable(test_matrix, tmp_path, aws_env):
    """Imported in the home region, copied to the others; in each: public (AMI and snapshot), a deprecation
    time, tags, and SSM parameters a user resolves with boto3 to the AMI of that region."""
    cell, files = cell_with_manifest(test_matrix, tmp_path, "bookworm-ec2-amd64")
    with_real_disk(tmp_path, files)
    manifest.write(cell, files)
    settings = Ec2Settings(
        region=REGIONS[0],
        bucket=_bucket("imports-regions"),
        regions=REGIONS[1:],
        public=True,
        deprecate_after_days=730,
        ssm_prefix="/debian/images",
    )
    made = ec2.upload(cell, files, Manifest.read(files.manifest), settings)
    name = f"debian-12-ec2-amd64-{VERSION}"
    assert list(made["regions"]) == list(REGIONS)
    assert len({r["ami"] for r in made["regions"].values()}) == 3
    deprecate_at = datetime.fromisoformat(made["deprecate_at"])
    assert abs((deprecate_at - datetime.now(UTC)).days - 730) <= 1
    for region in REGIONS:
        client = boto3.client("ec2", region_name=region)
        [image] = _images_named(name, region)
        assert image["ImageId"] == made["regions"][region]["ami"]
        assert image["DeprecationTime"].startswith(deprecate_at.strftime("%Y-%m-%dT%H:%M:%S"))
        tags = {t["Key"]: t["Value"] for t in image["Tags"]}
        assert tags["debian:arch"] == "amd64" and tags["debian:cell"] == cell.name
        permissions = client.describe_image_attribute(ImageId=image["ImageId"], Attribute="launchPermission")
        assert {"Group": "all"} in permissions["LaunchPermissions"]
        snapshot = made["regions"][region]["snapshot"]
        shared = client.describe_snapshot_attribute(SnapshotId=snapshot, Attribute="createVolumePermission")
        assert {"Group": "all"} in shared["CreateVolumePermissions"]
        ssm = boto3.client("ssm", region_name=region)
        for parameter in (f"/debian/images/bookworm/ec2/amd64/{VERSION}", "/debian/images/bookworm/ec2/amd64/latest"):
            answer = ssm.get_parameter(Name=parameter)["Parameter"]
            assert answer["Value"] == image["ImageId"] and answer["DataType"] == "aws:ec2:image"


def test_ec2_latest_moves_only_forward(test_matrix, tmp_path, aws_env):
    """A re-release of an older version gets its own parameter; latest keeps naming the newest."""
    bucket = _bucket("imports-latest")
    settings = Ec2Settings(region="us-east-1", bucket=bucket, ssm_prefix="/images")
    amis = {}
    for version in ("20261126-1", "20261120-1"):
        cell = test_matrix.cell("bookworm-ec2-amd64")
        files = fake_outputs(tmp_path / version, cell, version=version)
        with_real_disk(tmp_path, files)
        manifest.write(cell, files)
        amis[version] = ec2.upload(cell, files, Manifest.read(files.manifest), settings)["ami"]
    ssm = boto3.client("ssm", region_name="us-east-1")
    assert ssm.get_parameter(Name="/images/bookworm/ec2/amd64/latest")["Parameter"]["Value"] == amis["20261126-1"]
    assert ssm.get_parameter(Name="/images/bookworm/ec2/amd64/20261120-1")["Parameter"]["Value"] == amis["20261120-1"]


def test_ec2_all_regions_are_the_enabled_ones(aws_env):
    client = boto3.client("ec2", region_name="us-east-1")
    regions = ec2.target_regions(client, Ec2Settings(region="eu-west-1", bucket="b", regions=("all",)))
    enabled = {r["RegionName"] for r in client.describe_regions()["Regions"]}
    assert regions[0] == "eu-west-1" and set(regions) == enabled and len(regions) == len(enabled) > 3


def test_an_ec2_release_interrupted_after_one_region_does_the_rest_and_no_duplicate(
    test_matrix, tmp_path, aws_env, monkeypatch
):
    """The copy to the third region fails (the run was cancelled there); run again, the release copies
    only to that region. Every region holds one AMI of the name, also when the journal was lost."""
    cell, files = cell_with_manifest(test_matrix, tmp_path, "bookworm-ec2-amd64")
    with_real_disk(tmp_path, files)
    manifest.write(cell, files)
    settings = ReleaseSettings(
        instance_test=(),
        platforms={"ec2": Ec2Settings(region=REGIONS[0], bucket=_bucket("imports-resume"), regions=REGIONS[1:])},
    )
    location = storage.Location((tmp_path / "public").as_uri())
    real_copy = ec2.copy_to
    copies: list[str] = []

    def copy_to(client, region, *args):
        copies.append(region)
        if region == REGIONS[2] and copies.count(region) == 1:
            raise ec2.Ec2Failed(f"copying to {region}: the job was cancelled")
        return real_copy(client, region, *args)

    monkeypatch.setattr(ec2, "copy_to", copy_to)
    imports = len(aws_emulator_tasks())
    with pytest.raises(ec2.Ec2Failed, match="cancelled"):
        release.release(cell, files, True, location, FAST, settings, BOOT)
    assert [len(_images_named(f"debian-12-ec2-amd64-{VERSION}", r)) for r in REGIONS] == [1, 1, 0]
    record = release.release(cell, files, True, location, FAST, settings, BOOT)
    assert copies == [REGIONS[1], REGIONS[2], REGIONS[2]], "the second run copied to the missing region only"
    assert len(aws_emulator_tasks()) == imports + 1, "one snapshot import in all"
    assert list(record["platforms"][0]["regions"]) == list(REGIONS)

    # Journal lost (a CI job retried from scratch): the AMIs are found by name, none is made again.
    files.release_record.unlink()
    files.release_progress.unlink(missing_ok=True)
    again = release.release(cell, files, True, location, FAST, settings, BOOT)
    assert again["platforms"][0]["regions"] == record["platforms"][0]["regions"]
    assert [len(_images_named(f"debian-12-ec2-amd64-{VERSION}", r)) for r in REGIONS] == [1, 1, 1]
    assert len(aws_emulator_tasks()) == imports + 1


def aws_emulator_tasks() -> dict:
    from . import aws_emulator

    return aws_emulator.IMPORT_TASKS


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
    manifest.write(cell, files)  # by the image's own job, which had the disk
    files.raw.unlink()
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
@pytest.mark.parametrize("gallery", [False, True])
def test_azure_upload_writes_a_page_blob_and_asks_for_a_gallery_version_or_an_image(
    test_matrix, tmp_path, monkeypatch, gallery
):
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
        account = "/subscriptions/sub-1/resourceGroups/images/providers/Microsoft.Storage/storageAccounts/imgs"
        settings = AzureSettings(
            subscription="sub-1",
            resource_group="images",
            location="westeurope",
            container_url=f"{blob_server.url}/images",
            api_endpoint=management.url,
            **(
                {  # type: ignore[arg-type]  # a mapping of mixed values, each of its field's type
                    "gallery": "debian",
                    "gallery_image": "debian-12",
                    "storage_account_id": account,
                    "target_regions": ("northeurope", "westeurope"),
                    "managed_image": False,
                }
                if gallery
                else {}
            ),
        )
        made = azure.upload(cell, files, Manifest.read(files.manifest), settings)

        name = f"debian-12-azure-amd64-{VERSION}.vhd"
        blob = service.get_blob_client("images", name)
        assert blob.get_blob_properties().blob_type == "PageBlob"
        assert blob.download_blob().readall() == expected
        assert made["blob"] == f"{blob_server.url}/images/{name}"

        put, poll = management.requests
        assert (poll.method, poll.path) == ("GET", "/operations/1")
        if gallery:
            # Version 12.20261125.1200 of the definition debian-12-amd64, replicated where configured.
            assert put.method == "PUT" and put.path == (
                "/subscriptions/sub-1/resourceGroups/images/providers/Microsoft.Compute/galleries/debian/images/"
                f"debian-12-amd64/versions/12.20261125.1200?api-version={azure.GALLERY_API}"
            )
            body = json.loads(put.body)
            assert [r["name"] for r in body["properties"]["publishingProfile"]["targetRegions"]] == [
                "westeurope",
                "northeurope",
            ]
            assert body["properties"]["storageProfile"]["osDiskImage"]["source"] == {
                "storageAccountId": account,
                "uri": made["blob"],
            }
            assert "image" not in made and made["gallery_image_version"].startswith("/subscriptions/")
            return
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
    finally:
        management.stop()
        blob_server.stop()


def test_azure_gallery_versions_come_from_dated_release_versions(test_matrix):
    assert azure.gallery_version(test_matrix.cell("trixie-azure-amd64"), "20261127-3") == "13.20261127.3"
    assert azure.gallery_version(test_matrix.cell("sid-azure-arm64"), "20261127-1532") == "0.20261127.1532"
    with pytest.raises(azure.AzureFailed, match="no Azure gallery version .* expected a version YYYYMMDD-N.*'ci-42'"):
        azure.gallery_version(test_matrix.cell("sid-azure-arm64"), "ci-42")


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


class FakeCompute:
    """Compute Engine's image calls as Google documents them, with state: images (with family, labels,
    deprecation), operations that finish on the second look, pages of two images."""

    def __init__(self):
        self.images: dict[str, dict] = {}
        self.polls = 0

    def add(self, name: str, family: str, version: str, state: str = "ACTIVE", cell: str | None = None) -> None:
        self.images[name] = {
            "name": name,
            "family": family,
            "labels": {"debian-version": version, **({"debian-cell": cell} if cell else {})},
            "selfLink": f"https://compute.googleapis.com/compute/v1/projects/p/global/images/{name}",
            **({"deprecated": {"state": state}} if state != "ACTIVE" else {}),
        }

    def __call__(self, request, server):
        from urllib.parse import parse_qs, urlsplit

        url = urlsplit(request.path)
        images = "/compute/v1/projects/p/global/images"
        operation = {"name": "op-1", "status": "RUNNING", "selfLink": server.url + "/operations/op-1"}
        if url.path.startswith("/upload/storage/v1/b/"):
            return 200, {}, b'{"name": "uploaded"}'
        if url.path == "/operations/op-1":
            self.polls += 1
            return (
                200,
                {},
                json.dumps({"name": "op-1", "status": "DONE" if self.polls % 2 == 0 else "RUNNING"}).encode(),
            )
        if url.path == images and request.method == "POST":
            body = json.loads(request.body)
            labels = body["labels"]
            self.add(body["name"], body.get("family", ""), labels["debian-version"], cell=labels.get("debian-cell"))
            return 200, {}, json.dumps(operation).encode()
        if url.path == images and request.method == "GET":
            query = parse_qs(url.query)
            wanted = query["filter"][0]
            if wanted.startswith("labels.") and wanted.endswith(":*"):  # has the label
                label = wanted.removeprefix("labels.").removesuffix(":*")
                matching = sorted(n for n, i in self.images.items() if label in i["labels"])
            else:  # family = "<name>"
                family = wanted.split('"')[1]
                matching = sorted(n for n, i in self.images.items() if i["family"] == family)
            start = int(query.get("pageToken", ["0"])[0])
            page: dict[str, object] = {"items": [self.images[n] for n in matching[start : start + 2]]}
            if start + 2 < len(matching):
                page["nextPageToken"] = str(start + 2)
            return 200, {}, json.dumps(page).encode()
        name = url.path.removeprefix(images + "/")
        if name.endswith("/deprecate") and request.method == "POST":
            self.images[name.removesuffix("/deprecate")]["deprecated"] = json.loads(request.body)
            return 200, {}, json.dumps(operation).encode()
        if request.method == "GET" and name in self.images:
            return 200, {}, json.dumps(self.images[name]).encode()
        if request.method == "DELETE" and name in self.images:
            del self.images[name]
            return 200, {}, json.dumps(operation).encode()
        return 404, {}, b'{"error": {"code": 404}}'


def test_gce_upload_creates_the_image_in_its_family_and_deprecates_the_older_ones(test_matrix, tmp_path, monkeypatch):
    cell, files = cell_with_manifest(test_matrix, tmp_path, "trixie-gce-arm64")
    manifest.write(cell, files)
    compute = FakeCompute()
    family = "debian-13-arm64"
    compute.add("debian-13-gce-arm64-20261001-1", family, "20261001-1", state="DEPRECATED")
    compute.add("debian-13-gce-arm64-20261101-1", family, "20261101-1")
    compute.add("debian-13-gce-arm64-20261115-1", family, "20261115-1")
    compute.add("debian-13-gce-arm64-20261201-1", family, "20261201-1")  # newer: a re-release leaves it
    compute.add("debian-13-gce-amd64-20261101-1", "debian-13-amd64", "20261101-1")  # another family
    server = servers.RecordingServer(compute).start()
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
        name = f"debian-13-gce-arm64-{VERSION}".lower()
        [upload] = [r for r in server.requests if r.path.startswith("/upload/")]
        assert upload.method == "POST" and upload.path == (
            f"/upload/storage/v1/b/imports/o?uploadType=media&name={name}.tar.gz"
        )
        assert upload.body == files.artifact("tar.gz").read_bytes()
        assert upload.headers["Authorization"] == "Bearer gce-token"
        [insert] = [
            r for r in server.requests if r.method == "POST" and r.path == "/compute/v1/projects/p/global/images"
        ]
        body = json.loads(insert.body)
        assert body["name"] == name
        assert body["rawDisk"] == {"source": f"https://storage.googleapis.com/imports/{name}.tar.gz"}
        assert body["architecture"] == "ARM64" and body["family"] == family
        assert body["labels"]["debian-cell"] == "trixie-gce-arm64"
        assert {"type": "UEFI_COMPATIBLE"} in body["guestOsFeatures"]
        assert {"type": "SEV_CAPABLE"} not in body["guestOsFeatures"], "SEV is amd64 only"
        # The family's active, older images point to the new one; the newer and the other family's stay.
        assert made["deprecated"] == ["debian-13-gce-arm64-20261101-1", "debian-13-gce-arm64-20261115-1"]
        for old in made["deprecated"]:
            assert compute.images[old]["deprecated"] == {
                "state": "DEPRECATED",
                "replacement": compute.images[name]["selfLink"],
            }
        assert "deprecated" not in compute.images["debian-13-gce-arm64-20261201-1"]
        assert "deprecated" not in compute.images["debian-13-gce-amd64-20261101-1"]
        assert made == {
            "platform": "gce",
            "project": "p",
            "image": name,
            "family": family,
            "object": f"gs://imports/{name}.tar.gz",
            "deprecated": made["deprecated"],
        }

        # Run again (the release failed later): no second upload or image, nothing deprecated twice.
        before = len(server.requests)
        again = gce.upload(cell, files, Manifest.read(files.manifest), settings)
        assert again["deprecated"] == [] and again["image"] == name
        assert all(r.method == "GET" for r in server.requests[before:])
    finally:
        server.stop()


def test_gce_api_errors_are_reported_with_the_answer(test_matrix, tmp_path, monkeypatch):
    cell, files = cell_with_manifest(test_matrix, tmp_path, "bookworm-gce-amd64")
    manifest.write(cell, files)

    def google(request, _):
        if request.path.startswith("/upload/"):
            return 403, {}, b'{"error": "bucket imports: forbidden"}'
        return 404, {}, b"{}"  # no such image yet

    server = servers.RecordingServer(google).start()
    try:
        monkeypatch.setenv("GOOGLE_OAUTH_ACCESS_TOKEN", "gce-token")
        with pytest.raises(StageFailed, match="uploading to Cloud Storage: HTTP 403 .*forbidden") as caught:
            gce.upload(
                cell,
                files,
                Manifest.read(files.manifest),
                GceSettings(project="p", bucket="imports", storage_endpoint=server.url, api_endpoint=server.url),
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
        release.release(cell, files, True, location, FAST, ReleaseSettings(), BOOT)
    assert not (tmp_path / "public").exists() and not files.release_progress.exists()
