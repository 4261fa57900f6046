"""Amazon EC2: the image becomes an AMI in every configured region.

In the home region (`region`) the raw disk is converted to a stream-optimized
VMDK (only the blocks in use), uploaded to S3, imported as an EBS snapshot
(ImportSnapshot) and registered as an AMI with the boot mode, architecture,
ENA and SR-IOV flags it needs. The AMI is then copied to every other region
(`regions`, or all the account has enabled). In each region the AMI and its
snapshot are tagged, made public where configured, given their deprecation
time, and SSM parameters name it (per version, and as the newest of its
release, vendor and arch) so that users can resolve it.

Resumable: each region's AMI is written in the release journal as soon as it
exists, and an AMI of the same name already in a region is taken, not made
again, so that a release run again after a failure in one region does the
rest and never makes a second image. Through boto3: credentials and endpoint
come from its usual places (AWS_* variables, ~/.aws).
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from tasks.errors import StageFailed
from tasks.model.arch import Firmware
from tasks.model.layout import CellFiles
from tasks.model.matrix import Cell
from tasks.model.records import Manifest
from tasks.model.settings import PlatformSettings, boolean, names, number, path_prefix, required, setting, text, whole
from tasks.progress import StageProgress
from tasks.release.journal import Part, scratch
from tasks.release.platforms import Expired, Platform, beyond
from tasks.stages import diskimage
from tasks.stages.compress import qemu_img_convert

ROOT_DEVICE = "/dev/xvda"
REGION = re.compile(r"^(all|[a-z]{2}(-[a-z]+)+-\d+)$")


@dataclass(frozen=True)
class Ec2Settings(PlatformSettings):
    region: str = required("the AWS region the AMI is registered in (imported there, copied from there)", text())
    bucket: str = required("the S3 bucket the disk is imported from", text())
    prefix: str = setting("", "a key prefix in the bucket", text())
    regions: tuple[str, ...] = setting(
        (),
        "more regions the AMI is copied to; `[all]`: every region the account has enabled",
        names(REGION, "region", "regions"),
    )
    public: bool = setting(False, "make the AMIs and their snapshots public", boolean())
    deprecate_after_days: int = setting(
        0, "days after which EC2 marks the AMIs deprecated (hidden from searches); 0: never", whole(0, 3650)
    )
    ssm_prefix: str = setting(
        "",
        "SSM parameters under this path name the newest AMI per release, vendor and arch, and each version's "
        "(`<prefix>/<release>/<vendor>/<arch>/latest`); none when empty",
        path_prefix(),
    )
    import_timeout: float = setting(3600, "seconds the snapshot import may take", number(0, 86400))
    copy_timeout: float = setting(3600, "seconds a copy to another region may take", number(0, 86400))

    def conflicts(self) -> list[tuple[str, str]]:
        if "all" in self.regions and len(self.regions) > 1:
            return [("regions", "`all` stands alone: every enabled region")]
        return []


class Ec2Failed(StageFailed):
    pass


@contextlib.contextmanager
def aws_errors(what: str) -> Iterator[None]:
    """AWS's errors as one line saying what was being done (boto3 retries transient ones itself)."""
    import boto3.exceptions  # AWS's client: only when a release or cleanup calls it
    import botocore.exceptions

    try:
        yield
    except botocore.exceptions.NoCredentialsError:
        raise Ec2Failed(
            f"{what}: no AWS credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE "
            f"or ~/.aws/credentials)"
        ) from None
    except botocore.exceptions.ClientError as error:
        info = error.response.get("Error", {})
        raise Ec2Failed(f"{what}: {info.get('Code', 'error')}: {info.get('Message', '')}".rstrip(": ")) from None
    except (boto3.exceptions.S3UploadFailedError, botocore.exceptions.BotoCoreError) as error:
        raise Ec2Failed(f"{what}: {error}") from None


def boot_mode(cell: Cell) -> str:
    # Hybrid amd64 images boot either way; UEFI where the instance type offers it.
    return "uefi-preferred" if Firmware.BIOS in cell.arch.kind.firmware else "uefi"


def register_request(cell: Cell, name: str, snapshot: str, description: str) -> dict:
    """RegisterImage's parameters for a cell's snapshot."""
    return {
        "Name": name,
        "Description": description,
        "Architecture": cell.arch.kind.spec.ec2,
        "BootMode": boot_mode(cell),
        "RootDeviceName": ROOT_DEVICE,
        "VirtualizationType": "hvm",
        "EnaSupport": True,
        "SriovNetSupport": "simple",
        "ImdsSupport": "v2.0",
        "BlockDeviceMappings": [
            {
                "DeviceName": ROOT_DEVICE,
                "Ebs": {"SnapshotId": snapshot, "VolumeType": "gp3", "DeleteOnTermination": True},
            }
        ],
    }


def wait_for_import(ec2, task_id: str, timeout: float, interval: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        task = ec2.describe_import_snapshot_tasks(ImportTaskIds=[task_id])["ImportSnapshotTasks"][0]
        detail = task["SnapshotTaskDetail"]
        if detail.get("Status") == "completed":
            return detail["SnapshotId"]
        if detail.get("Status") in ("deleted", "deleting") or "error" in (detail.get("StatusMessage") or "").lower():
            raise Ec2Failed(f"import of the snapshot failed: {detail.get('StatusMessage') or detail.get('Status')}")
        if time.monotonic() > deadline:
            raise Ec2Failed(f"import task {task_id} did not finish within {timeout:.0f} s")
        time.sleep(interval)


TAG_PREFIX = "debian:"
# The tags every AMI and snapshot of a release carries: how `doit cleanup` finds them.
TAG_KEYS = ("release", "vendor", "arch", "version", "cell")


def tags_of(cell: Cell, manifest: Manifest) -> list[dict]:
    values = {
        "release": cell.release.name,
        "vendor": cell.vendor.name,
        "arch": cell.arch.name,
        "version": manifest.version,
        "cell": cell.name,
    }
    return [{"Key": "Name", "Value": manifest.name}] + [
        {"Key": TAG_PREFIX + key, "Value": values[key]} for key in TAG_KEYS
    ]


def client(service: str, region: str):
    import boto3

    return boto3.client(service, region_name=region)


def target_regions(ec2, settings: Ec2Settings) -> list[str]:
    """The regions the AMI goes to, the home region first."""
    if settings.regions == ("all",):
        with aws_errors("listing the account's regions"):
            answer = ec2.describe_regions(
                Filters=[{"Name": "opt-in-status", "Values": ["opt-in-not-required", "opted-in"]}]
            )
        others = sorted(r["RegionName"] for r in answer["Regions"])
    else:
        others = list(settings.regions)
    return [settings.region, *(r for r in others if r != settings.region)]


def existing(ec2, name: str) -> dict | None:
    """An AMI of this name the account already has in ec2's region (made by an earlier attempt)."""
    images = ec2.describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": [name]}])["Images"]
    usable = [i for i in images if i.get("State") in ("pending", "available")]
    if not usable:
        return None
    image = usable[0]
    return {"ami": image["ImageId"], "snapshot": _snapshot_of(image)}


def _snapshot_of(image: dict) -> str | None:
    for mapping in image.get("BlockDeviceMappings", []):
        if mapping.get("DeviceName") == image.get("RootDeviceName") and "Ebs" in mapping:
            return mapping["Ebs"].get("SnapshotId")
    return None


def wait_available(ec2, ami: str, timeout: float, interval: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        [image] = ec2.describe_images(ImageIds=[ami])["Images"]
        if image["State"] == "available":
            return image
        if image["State"] in ("failed", "invalid", "error", "deregistered"):
            reason = image.get("StateReason", {}).get("Message", image["State"])
            raise Ec2Failed(f"{ami} did not become available: {reason}")
        if time.monotonic() > deadline:
            raise Ec2Failed(f"{ami} was not available within {timeout:.0f} s")
        time.sleep(interval)


def import_and_register(cell: Cell, files: CellFiles, manifest: Manifest, settings: Ec2Settings, ec2) -> dict:
    region = settings.region
    bucket, prefix = settings.bucket, settings.prefix.strip("/")
    name = manifest.name
    s3 = client("s3", region)
    key = f"{prefix}/{name}.vmdk" if prefix else f"{name}.vmdk"
    with diskimage.raw_disk(files) as raw, diskimage.scratch_dir(files) as scratch:
        vmdk = scratch / "disk.vmdk"
        qemu_img_convert(
            ["-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized", str(raw), str(vmdk)], f"vmdk {cell.name}"
        )
        with (
            StageProgress(f"S3 upload {name}", total=vmdk.stat().st_size) as progress,
            aws_errors(f"uploading {vmdk.name} to s3://{bucket}/{key}"),
        ):
            s3.upload_file(str(vmdk), bucket, key, Callback=lambda sent: progress.update(advance=sent))
    try:
        with aws_errors(f"importing s3://{bucket}/{key} as a snapshot"):
            task = ec2.import_snapshot(
                Description=name,
                DiskContainer={"Description": name, "Format": "VMDK", "UserBucket": {"S3Bucket": bucket, "S3Key": key}},
                TagSpecifications=[{"ResourceType": "import-snapshot-task", "Tags": tags_of(cell, manifest)}],
            )
            snapshot = wait_for_import(ec2, task["ImportTaskId"], float(settings.import_timeout))
        with aws_errors(f"registering {name} from {snapshot}"):
            ami = ec2.register_image(**register_request(cell, name, snapshot, description(cell)))["ImageId"]
    finally:
        with aws_errors(f"deleting s3://{bucket}/{key}"):
            s3.delete_object(Bucket=bucket, Key=key)  # the snapshot holds the image now
    return {"ami": ami, "snapshot": snapshot}


def description(cell: Cell) -> str:
    return f"Debian {cell.release.version} ({cell.vendor.name}, {cell.arch.name})"


def copy_to(ec2, region: str, home: str, made: dict, name: str, cell: Cell, timeout: float) -> dict:
    with aws_errors(f"copying {made['ami']} from {home} to {region}"):
        ami = ec2.copy_image(SourceRegion=home, SourceImageId=made["ami"], Name=name, Description=description(cell))
        image = wait_available(ec2, ami["ImageId"], timeout)
    return {"ami": image["ImageId"], "snapshot": _snapshot_of(image)}


def finish(ec2, region: str, made: dict, tags: list[dict], settings: Ec2Settings, deprecate_at: str | None) -> None:
    """What each region's AMI gets, every time (each call is idempotent): tags, publicity, deprecation."""
    with aws_errors(f"tagging {made['ami']} in {region}"):
        ec2.create_tags(Resources=[made["ami"], *([made["snapshot"]] if made["snapshot"] else [])], Tags=tags)
    if settings.public:
        with aws_errors(f"making {made['ami']} public in {region}"):
            ec2.modify_image_attribute(ImageId=made["ami"], LaunchPermission={"Add": [{"Group": "all"}]})
            if made["snapshot"]:
                ec2.modify_snapshot_attribute(
                    SnapshotId=made["snapshot"],
                    Attribute="createVolumePermission",
                    OperationType="add",
                    GroupNames=["all"],
                )
    if deprecate_at:
        with aws_errors(f"setting the deprecation time of {made['ami']} in {region}"):
            ec2.enable_image_deprecation(ImageId=made["ami"], DeprecateAt=datetime.fromisoformat(deprecate_at))


def parameter_names(cell: Cell, version: str, prefix: str) -> tuple[str, str]:
    """The SSM parameters naming a cell's AMI: its version's, and the newest's."""
    base = f"{prefix.rstrip('/')}/{cell.release.name}/{cell.vendor.name}/{cell.arch.name}"
    return f"{base}/{version}", f"{base}/latest"


def _version_of(ec2, ami: str) -> str | None:
    import botocore.exceptions

    try:
        [image] = ec2.describe_images(ImageIds=[ami])["Images"]
    except (botocore.exceptions.ClientError, ValueError):
        return None  # gone: anything is newer
    return next((t["Value"] for t in image.get("Tags", []) if t["Key"] == TAG_PREFIX + "version"), None)


def point_parameters(ec2, ssm, region: str, cell: Cell, version: str, ami: str, prefix: str) -> list[str]:
    """Write the version's parameter; move latest only forward (a re-release of an older version leaves it)."""
    mine, latest = parameter_names(cell, version, prefix)
    written = [mine]
    with aws_errors(f"writing SSM parameters in {region}"):
        ssm.put_parameter(Name=mine, Value=ami, Type="String", DataType="aws:ec2:image", Overwrite=True)
        try:
            current = ssm.get_parameter(Name=latest)["Parameter"]["Value"]
        except ssm.exceptions.ParameterNotFound:
            current = None
        newest = _version_of(ec2, current) if current and current != ami else None
        if current != ami and (newest is None or newest <= version):
            ssm.put_parameter(Name=latest, Value=ami, Type="String", DataType="aws:ec2:image", Overwrite=True)
            written.append(latest)
    return written


def upload(
    cell: Cell, files: CellFiles, manifest: Manifest, settings: Ec2Settings, journal: Part | None = None
) -> dict:
    """The AMI in the home region, then copied to the others; what was made in each."""
    journal = journal or scratch()
    home, name = settings.region, manifest.name
    tags = tags_of(cell, manifest)
    home_ec2 = client("ec2", home)
    regions: dict[str, dict] = {}
    for region in target_regions(home_ec2, settings):
        made = journal.recall(f"ami:{region}")
        if made is None:
            ec2 = home_ec2 if region == home else client("ec2", region)
            with aws_errors(f"looking for {name} in {region}"):
                made = existing(ec2, name)
            if made:
                print(f"ec2: {region} has {name} already: {made['ami']}")
            elif region == home:
                made = import_and_register(cell, files, manifest, settings, ec2)
            else:
                made = copy_to(ec2, region, home, regions[home], name, cell, float(settings.copy_timeout))
            journal.remember(f"ami:{region}", made)
        regions[region] = made
        print(f"ec2: {region}: {made['ami']}")

    deprecate_at = journal.recall("deprecate_at")
    if deprecate_at is None and settings.deprecate_after_days:
        # From the first attempt: a rerun does not move it.
        when = datetime.now(UTC).replace(microsecond=0) + timedelta(days=settings.deprecate_after_days)
        deprecate_at = when.isoformat()
        journal.remember("deprecate_at", deprecate_at)
    parameters: dict[str, list[str]] = {}
    for region, made in regions.items():
        ec2 = home_ec2 if region == home else client("ec2", region)
        finish(ec2, region, made, tags, settings, deprecate_at or None)
        if settings.ssm_prefix:
            parameters[region] = point_parameters(
                ec2, client("ssm", region), region, cell, manifest.version, made["ami"], settings.ssm_prefix
            )
    return {
        "platform": Ec2.name,
        "region": home,
        "ami": regions[home]["ami"],
        "snapshot": regions[home]["snapshot"],
        "regions": regions,
        "public": settings.public,
        "deprecate_at": deprecate_at or None,
        "ssm_parameters": parameters,
    }


def _tag(image: dict, key: str) -> str:
    return next((t["Value"] for t in image.get("Tags", []) if t["Key"] == TAG_PREFIX + key), "")


def expired(settings: Ec2Settings, keep: int, architectures: Iterable[str] = ()) -> list[Expired]:
    """The AMIs a release made (tagged debian:cell) beyond the newest `keep` of their cell, in every
    region, with their snapshots (deregistering an AMI leaves its snapshot behind)."""
    found = []
    with aws_errors("listing the released AMIs"):
        home = client("ec2", settings.region)
        for region in target_regions(home, settings):
            ec2 = home if region == settings.region else client("ec2", region)
            images = ec2.describe_images(
                Owners=["self"], Filters=[{"Name": "tag-key", "Values": [TAG_PREFIX + "cell"]}]
            )["Images"]
            for image in beyond(images, lambda i: _tag(i, "cell"), lambda i: _tag(i, "version"), keep):
                ami = image["ImageId"]
                snapshots = tuple(m["Ebs"]["SnapshotId"] for m in image.get("BlockDeviceMappings", []) if "Ebs" in m)

                def remove(ec2=ec2, ami=ami, snapshots=snapshots, region=region):
                    with aws_errors(f"deleting {ami} in {region}"):
                        ec2.deregister_image(ImageId=ami)
                        for snapshot in snapshots:  # deregistering leaves them
                            ec2.delete_snapshot(SnapshotId=snapshot)

                found.append(
                    Expired(Ec2.name, region, _tag(image, "cell"), _tag(image, "version"), ami, snapshots, remove)
                )
    return found


class Ec2(Platform):
    name = "ec2"
    settings = Ec2Settings
    upload = staticmethod(upload)
    expired = staticmethod(expired)
