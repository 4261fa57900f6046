"""`doit cleanup [confirm=yes]`: what the platforms and the storage hold beyond the retention settings.

Listed always, deleted only with confirm=yes:

- EC2, in every region of release.platforms.ec2: the AMIs a release made (tagged
  debian:cell) beyond the newest release.keep_releases of their cell, with
  their snapshots (deregistering an AMI leaves its snapshot behind);
- GCE: the images a release made (labelled debian-cell) beyond the newest
  release.keep_releases of their cell;
- Azure: the gallery image versions and managed images a release made
  (tagged debian-cell) beyond the newest release.keep_releases of their cell,
  with the VHD blobs they were made from;
- storage: the dailies beyond publish.keep_dailies of each release (never the
  one `latest` names), deleted under the storage's lock.

Versions are ordered as tasks/model/version.py says; what carries no version
(an image tagged by hand) is never counted and never deleted. The newest
release of a cell is never touched (keep_releases is at least 1).
A platform that is not configured is not asked; one that cannot be reached
fails the cleanup with one line, before anything is deleted.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from tasks.errors import StageFailed
from tasks.model.plan import Plan
from tasks.model.version import Version
from tasks.stages import publish
from tasks.storage.backend import RetryPolicy


class CleanupFailed(StageFailed):
    pass


@dataclass
class Expired:
    platform: str
    where: str  # region, project, storage
    cell: str
    version: str
    what: str  # the AMI id, the image or directory name
    parts: tuple[str, ...] = ()  # what goes with it: snapshots
    remove: Callable[[], None] = field(default=lambda: None, repr=False)

    def describe(self) -> str:
        extra = f" (with {', '.join(self.parts)})" if self.parts else ""
        return f"{self.platform} {self.where}: {self.what} {self.cell} {self.version}{extra}"


def beyond(items: Iterable, cell_of: Callable, version_of: Callable, keep: int) -> list:
    """The items older than the newest `keep` versions of their cell (items without a version are kept)."""
    keep = max(keep, 1)  # never the newest
    expired = []
    versioned = [item for item in items if Version.of(version_of(item))]
    ordered = sorted(versioned, key=cell_of)
    for _, grouped in itertools.groupby(ordered, key=cell_of):
        group = list(grouped)
        newest_first = sorted({Version.parse(version_of(item)) for item in group}, reverse=True)
        old = {str(v) for v in newest_first[keep:]}
        expired += [item for item in group if version_of(item) in old]
    return expired


def _tag(image: dict, key: str) -> str:
    from tasks.release.platforms.ec2 import TAG_PREFIX

    return next((t["Value"] for t in image.get("Tags", []) if t["Key"] == TAG_PREFIX + key), "")


def _ec2(plan: Plan) -> list[Expired]:
    settings = plan.matrix.release.platforms.get("ec2")
    if settings is None:
        return []
    from tasks.release.platforms import ec2

    found = []
    with ec2.aws_errors("listing the released AMIs"):
        home = ec2.client("ec2", settings.region)
        for region in ec2.target_regions(home, settings):
            client = home if region == settings.region else ec2.client("ec2", region)
            images = client.describe_images(
                Owners=["self"], Filters=[{"Name": "tag-key", "Values": [ec2.TAG_PREFIX + "cell"]}]
            )["Images"]
            old = beyond(
                images, lambda i: _tag(i, "cell"), lambda i: _tag(i, "version"), plan.matrix.release.keep_releases
            )
            for image in old:
                ami = image["ImageId"]
                snapshots = tuple(m["Ebs"]["SnapshotId"] for m in image.get("BlockDeviceMappings", []) if "Ebs" in m)

                def remove(client=client, ami=ami, snapshots=snapshots, region=region):
                    with ec2.aws_errors(f"deleting {ami} in {region}"):
                        client.deregister_image(ImageId=ami)
                        for snapshot in snapshots:  # deregistering leaves them
                            client.delete_snapshot(SnapshotId=snapshot)

                found.append(
                    Expired("ec2", region, _tag(image, "cell"), _tag(image, "version"), ami, snapshots, remove)
                )
    return found


def _gce(plan: Plan) -> list[Expired]:
    settings = plan.matrix.release.platforms.get("gce")
    if settings is None:
        return []
    from tasks.release.platforms import gce

    compute = gce.Compute(settings, gce.token())
    images = compute.images("labels.debian-cell:*")
    expired = beyond(
        images,
        lambda i: i["labels"]["debian-cell"],
        lambda i: i["labels"].get("debian-version", ""),
        plan.matrix.release.keep_releases,
    )
    return [
        Expired(
            "gce",
            settings.project,
            i["labels"]["debian-cell"],
            i["labels"].get("debian-version", ""),
            i["name"],
            remove=functools.partial(compute.delete, i["name"]),
        )
        for i in expired
    ]


def _azure(plan: Plan) -> list[Expired]:
    settings = plan.matrix.release.platforms.get("azure")
    if settings is None:
        return []
    from tasks.release.platforms import azure

    manager = azure.ResourceManager(settings, azure.env_value("AZURE_ACCESS_TOKEN"))
    sas = azure.env_value("AZURE_STORAGE_SAS")
    keep = plan.matrix.release.keep_releases
    found = []

    def tag(resource: dict, key: str) -> str:
        return (resource.get("tags") or {}).get(f"debian-{key}", "")

    def remove(resource_id: str, api: str, blob: str) -> None:
        manager.delete(resource_id, api)
        azure.delete_blob(blob, sas)  # the VHD a version or image was made from

    if settings.gallery:
        for arch in plan.matrix.architectures:
            versions = manager.list(azure.gallery_versions_path(settings, arch), azure.GALLERY_API)
            for version in beyond(
                [v for v in versions if tag(v, "cell")], lambda v: tag(v, "cell"), lambda v: tag(v, "version"), keep
            ):
                blob = version["properties"]["storageProfile"]["osDiskImage"]["source"]["uri"]
                found.append(
                    Expired(
                        "azure",
                        f"gallery {settings.gallery}",
                        tag(version, "cell"),
                        tag(version, "version"),
                        f"{settings.gallery_image}-{arch}/{version['name']}",
                        (blob,),
                        functools.partial(remove, version["id"], azure.GALLERY_API, blob),
                    )
                )
    if settings.managed_image:
        images = [i for i in manager.list(azure.images_path(settings), azure.COMPUTE_API) if tag(i, "cell")]
        for image in beyond(images, lambda i: tag(i, "cell"), lambda i: tag(i, "version"), keep):
            blob = image["properties"]["storageProfile"]["osDisk"]["blobUri"]
            found.append(
                Expired(
                    "azure",
                    settings.resource_group,
                    tag(image, "cell"),
                    tag(image, "version"),
                    image["name"],
                    (blob,),
                    functools.partial(remove, image["id"], azure.COMPUTE_API, blob),
                )
            )
    return found


def _storage(plan: Plan) -> list[Expired]:
    backend = plan.storage.open(RetryPolicy(plan.matrix.publish.retries, plan.matrix.publish.retry_delay))
    keep = plan.matrix.publish.keep_dailies
    found = []

    def remove(release: str, version: str) -> None:
        # Under the lock, and only if a publication since the listing has not made it `latest`.
        with backend.locked(f"cleanup of the {release} dailies"):
            if version in publish.expired_dailies(backend, release, keep):
                publish.delete_daily(backend, release, version)

    for release in plan.matrix.releases:
        for version in publish.expired_dailies(backend, release, keep):
            where, directory = plan.storage.url, publish.daily_dir(release, version)
            found.append(
                Expired(
                    "storage",
                    where,
                    f"{release} daily",
                    version,
                    directory,
                    (),
                    functools.partial(remove, release, version),
                )
            )
    return found


# Each place that holds releases, in the order they are listed.
SOURCES: tuple[Callable[[Plan], list[Expired]], ...] = (_ec2, _gce, _azure, _storage)


def expired(plan: Plan) -> list[Expired]:
    return [item for source in SOURCES for item in source(plan)]


def cleanup(plan: Plan) -> list[Expired]:
    """List what is beyond retention; delete it when the plan is confirmed. What was found."""
    found = expired(plan)
    verb = "deleting" if plan.confirmed else "would delete"
    for item in found:
        print(f"{verb}: {item.describe()}")
        if plan.confirmed:
            item.remove()
    if not found:
        print("nothing beyond the retention settings")
    elif not plan.confirmed:
        print(f"{len(found)} beyond the retention settings; `doit cleanup confirm=yes` deletes them")
    else:
        print(f"deleted {len(found)}")
    return found
