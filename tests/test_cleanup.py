"""doit cleanup: exactly what lies beyond the retention settings, deleted only when confirmed
(EC2 on moto over a socket, GCE as the recording server answers, storage on disk)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import boto3
import pytest
import yaml

from tasks.model import plan as plan_module
from tasks.model.records import Manifest
from tasks.release import cleanup, platforms
from tasks.release.platforms import ec2
from tasks.release.platforms.ec2 import Ec2Settings
from tasks.stages import manifest

from . import servers
from .conftest import fake_outputs, run_doit
from .test_release import FakeCompute, with_real_disk

REPO = Path(__file__).resolve().parent.parent
FIXTURE = yaml.safe_load((REPO / "tests" / "data" / "matrix.yaml").read_text())
REGIONS = ("us-east-1", "eu-west-1")
VERSIONS = ("20261101-1", "20261108-1", "20261115-1")


def plan_with(tmp_path: Path, platforms: dict, keep_releases: int = 1, **options):
    data = {
        **FIXTURE,
        "release": {**FIXTURE.get("release", {}), "platforms": platforms, "keep_releases": keep_releases},
    }
    matrix = tmp_path / "matrix.yaml"
    matrix.write_text(yaml.safe_dump(data, sort_keys=False))
    given = {"matrix": str(matrix), "workdir": str(tmp_path / "work"), "storage": str(tmp_path / "storage"), **options}
    return plan_module.from_options(REPO, given.get), matrix


def released(test_matrix, tmp_path, cell_name: str, versions, settings: Ec2Settings) -> dict[str, dict]:
    """AMIs made the way a release makes them, one per version, in every region."""
    made = {}
    for version in versions:
        cell = test_matrix.cell(cell_name)
        files = fake_outputs(tmp_path / f"{cell_name}-{version}", cell, version=version)
        with_real_disk(tmp_path, files)
        manifest.write(cell, files)
        made[version] = ec2.upload(cell, files, Manifest.read(files.manifest), settings)["regions"]
    return made


def _amis(region: str) -> set[str]:
    return {i["ImageId"] for i in boto3.client("ec2", region_name=region).describe_images(Owners=["self"])["Images"]}


def _snapshots(region: str) -> set[str]:
    client = boto3.client("ec2", region_name=region)
    return {s["SnapshotId"] for s in client.describe_snapshots(OwnerIds=["self"])["Snapshots"]}


def test_cleanup_lists_exactly_the_expired_amis_and_snapshots_and_deletes_them_when_confirmed(
    test_matrix, tmp_path, aws_env
):
    boto3.client("s3", region_name=REGIONS[0]).create_bucket(Bucket="imports")
    settings = Ec2Settings(region=REGIONS[0], bucket="imports", regions=REGIONS[1:])
    bookworm = released(test_matrix, tmp_path, "bookworm-ec2-amd64", VERSIONS, settings)
    trixie = released(test_matrix, tmp_path, "trixie-ec2-amd64", VERSIONS[:1], settings)  # its only release
    # An AMI this project did not make (no debian:cell tag): never touched.
    client = boto3.client("ec2", region_name=REGIONS[0])
    snapshot = bookworm[VERSIONS[0]][REGIONS[0]]["snapshot"]
    foreign = client.register_image(
        **ec2.register_request(test_matrix.cell("sid-ec2-amd64"), "not-ours", snapshot, "x")
    )
    before = {region: (_amis(region), _snapshots(region)) for region in REGIONS}
    platforms = {"ec2": {"region": REGIONS[0], "bucket": "imports", "regions": list(REGIONS[1:])}}

    # keep_releases 2: the oldest bookworm release goes, in both regions, with its snapshot.
    plan, matrix = plan_with(tmp_path, platforms, keep_releases=2)
    found = cleanup.expired(plan)
    expected = {(region, bookworm[VERSIONS[0]][region]["ami"]) for region in REGIONS}
    assert {(item.where, item.what) for item in found} == expected
    assert {item.parts for item in found} == {(bookworm[VERSIONS[0]][region]["snapshot"],) for region in REGIONS}

    # Through doit: without confirm=yes it lists and deletes nothing.
    def doit(*options):
        options = (f"matrix={matrix}", f"workdir={tmp_path / 'work'}", f"storage={tmp_path / 'storage'}", *options)
        return run_doit("cleanup", *options)

    listed = doit()
    assert listed.returncode == 0, listed.stdout + listed.stderr
    for region, ami in expected:
        assert f"would delete: ec2 {region}: {ami} bookworm-ec2-amd64 {VERSIONS[0]}" in listed.stdout
    assert "2 beyond the retention settings; `doit cleanup confirm=yes` deletes them" in listed.stdout
    assert {region: (_amis(region), _snapshots(region)) for region in REGIONS} == before

    deleted = doit("confirm=yes")
    assert deleted.returncode == 0 and "deleted 2" in deleted.stdout, deleted.stdout + deleted.stderr
    for region in REGIONS:
        gone = bookworm[VERSIONS[0]][region]
        assert _amis(region) == before[region][0] - {gone["ami"]}
        assert _snapshots(region) == before[region][1] - {gone["snapshot"]}
    assert foreign["ImageId"] in _amis(REGIONS[0])
    assert all(trixie[VERSIONS[0]][region]["ami"] in _amis(region) for region in REGIONS), "the newest of a cell stays"
    assert cleanup.expired(plan) == []


def test_keep_releases_one_keeps_the_newest_of_each_cell(test_matrix, tmp_path, aws_env):
    boto3.client("s3", region_name=REGIONS[0]).create_bucket(Bucket="imports")
    settings = Ec2Settings(region=REGIONS[0], bucket="imports")
    bookworm = released(test_matrix, tmp_path, "bookworm-ec2-amd64", VERSIONS, settings)
    plan, _ = plan_with(tmp_path, {"ec2": {"region": REGIONS[0], "bucket": "imports"}}, keep_releases=1)
    assert sorted(item.version for item in cleanup.expired(plan)) == list(VERSIONS[:2])
    assert bookworm[VERSIONS[2]][REGIONS[0]]["ami"] not in {item.what for item in cleanup.expired(plan)}


def test_cleanup_of_gce_images_and_storage_dailies(test_matrix, tmp_path, monkeypatch):
    compute = FakeCompute()
    for version in VERSIONS:
        compute.add(f"debian-12-gce-amd64-{version}", "debian-12-amd64", version, cell="bookworm-gce-amd64")
    compute.add("debian-13-gce-amd64-20261101-1", "debian-13-amd64", "20261101-1", cell="trixie-gce-amd64")
    compute.add("someone-elses", "other", "1")  # no debian-cell label
    server = servers.RecordingServer(compute).start()
    daily = tmp_path / "storage" / "bookworm" / "daily"
    for version in ("20261120-1", "20261121-1", "20261122-1", "20261123-1"):
        (daily / version).mkdir(parents=True)
    (daily / "latest").write_text("20261121-1\n")  # `latest` is never deleted
    try:
        monkeypatch.setenv("GOOGLE_OAUTH_ACCESS_TOKEN", "gce-token")
        gce = {"project": "p", "bucket": "b", "api_endpoint": server.url, "poll_seconds": 0}
        plan, _ = plan_with(tmp_path, {"gce": gce}, keep_releases=2)
        plan = dataclasses.replace(
            plan,
            matrix=dataclasses.replace(plan.matrix, publish=dataclasses.replace(plan.matrix.publish, keep_dailies=2)),
        )
        found = cleanup.cleanup(plan)
        assert [(i.platform, i.what) for i in found] == [
            ("gce", f"debian-12-gce-amd64-{VERSIONS[0]}"),
            ("storage", "bookworm/daily/20261120-1"),
        ]
        assert len(compute.images) == 5 and (daily / "20261120-1").exists(), "listed, not deleted"
        confirmed = dataclasses.replace(plan, confirmed=True)
        cleanup.cleanup(confirmed)
        assert f"debian-12-gce-amd64-{VERSIONS[0]}" not in compute.images and len(compute.images) == 4
        assert sorted(p.name for p in daily.iterdir() if p.is_dir()) == ["20261121-1", "20261122-1", "20261123-1"]
    finally:
        server.stop()


def test_retention_picks_versions_per_cell():
    # A version in two places; serials ordered as numbers (10 after 9), not as text.
    new, old1, old2 = "20261207-10", "20261207-9", "20261206-2300"
    items = [("a", new), ("a", old2), ("b", old2), ("a", old1), ("a", old1), ("a", "by-hand")]
    old = platforms.beyond(items, lambda i: i[0], lambda i: i[1], keep=1)
    assert sorted(old) == [("a", old2), ("a", old1), ("a", old1)], "what is not a version is never expired"
    assert sorted(platforms.beyond(items, lambda i: i[0], lambda i: i[1], keep=0)) == sorted(old)


class FakeResourceManager:
    """Resource Manager's list (paged with nextLink) and delete (asynchronous) of gallery image versions
    and managed images, with state."""

    def __init__(self):
        self.resources: dict[str, dict] = {}  # id -> resource

    def add(self, resource_id: str, cell: str, version: str, blob: str, gallery: bool) -> None:
        disk = {"osDiskImage": {"source": {"uri": blob}}} if gallery else {"osDisk": {"blobUri": blob}}
        self.resources[resource_id] = {
            "id": resource_id,
            "name": resource_id.rsplit("/", 1)[1],
            "tags": {"debian-cell": cell, "debian-version": version} if cell else {},
            "properties": {"storageProfile": disk},
        }

    def __call__(self, request, server):
        from urllib.parse import parse_qs, urlsplit

        url = urlsplit(request.path)
        if url.path == "/operations/delete":
            return 200, {}, b'{"status": "Succeeded"}'
        if request.method == "DELETE":
            self.resources.pop(url.path)
            return 202, {"Azure-AsyncOperation": server.url + "/operations/delete"}, b""
        children = sorted(r for r in self.resources if r.rsplit("/", 1)[0] == url.path)
        if not children:
            return 404, {}, b'{"error": {"code": "ResourceNotFound"}}'
        skip = int(parse_qs(url.query).get("skip", ["0"])[0])
        page: dict[str, object] = {"value": [self.resources[r] for r in children[skip : skip + 2]]}
        if skip + 2 < len(children):
            page["nextLink"] = f"{server.url}{url.path}?{url.query.split('&skip=')[0]}&skip={skip + 2}"
        return 200, {}, json.dumps(page).encode()


@pytest.mark.skipif(not servers.have_azurite(), reason="Azurite (npm) is installed by tools/setup-host")
def test_cleanup_of_azure_gallery_versions_images_and_their_blobs(tmp_path, monkeypatch):
    from datetime import UTC, datetime, timedelta

    from azure.storage.blob import BlobServiceClient, ContainerSasPermissions, generate_container_sas

    blob_server = servers.Azurite(tmp_path / "azurite").start()
    manager = FakeResourceManager()
    management = servers.RecordingServer(manager).start()
    try:
        service = BlobServiceClient.from_connection_string(blob_server.connection_string)
        service.create_container("images")
        container = f"{blob_server.url}/images"
        group = "/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute"
        for version in VERSIONS:
            name = f"debian-12-azure-amd64-{version}"
            service.get_blob_client("images", f"{name}.vhd").upload_blob(b"vhd")
            blob = f"{container}/{name}.vhd"
            gallery_version = "12." + version.replace("-", ".")
            cell = "bookworm-azure-amd64"
            manager.add(
                f"{group}/galleries/d/images/debian-12-amd64/versions/{gallery_version}", cell, version, blob, True
            )
            manager.add(f"{group}/images/{name}", cell, version, blob, False)
        manager.add(f"{group}/images/not-ours", "", "", f"{container}/not-ours.vhd", False)
        sas = generate_container_sas(
            servers.Azurite.ACCOUNT,
            "images",
            account_key=servers.Azurite.KEY,
            permission=ContainerSasPermissions(read=True, write=True, delete=True, list=True),
            expiry=datetime.now(UTC) + timedelta(hours=1),
        )
        monkeypatch.setenv("AZURE_STORAGE_SAS", sas)
        monkeypatch.setenv("AZURE_ACCESS_TOKEN", "arm-token")
        azure = {
            "subscription": "s",
            "resource_group": "g",
            "location": "westeurope",
            "container_url": container,
            "gallery": "d",
            "gallery_image": "debian-12",
            "storage_account_id": "/subscriptions/s/x",
            "api_endpoint": management.url,
        }
        plan, _ = plan_with(tmp_path, {"azure": azure}, keep_releases=1)
        found = cleanup.cleanup(plan)
        old = [f"debian-12-azure-amd64-{v}" for v in VERSIONS[:2]]
        assert sorted(i.what for i in found) == sorted(
            [f"debian-12-amd64/12.{v.replace('-', '.')}" for v in VERSIONS[:2]] + old
        )
        assert len(manager.resources) == 7, "listed, not deleted"
        cleanup.cleanup(dataclasses.replace(plan, confirmed=True))
        assert sorted(r.rsplit("/", 1)[1] for r in manager.resources) == [
            f"12.{VERSIONS[2].replace('-', '.')}",
            f"debian-12-azure-amd64-{VERSIONS[2]}",
            "not-ours",
        ]
        left = sorted(b.name for b in service.get_container_client("images").list_blobs())
        assert left == [f"debian-12-azure-amd64-{VERSIONS[2]}.vhd"]
    finally:
        management.stop()
        blob_server.stop()
