"""Amazon EC2: the image becomes an AMI.

The raw disk is converted to a stream-optimized VMDK (only the blocks in
use), uploaded to S3, imported as an EBS snapshot (ImportSnapshot), and
registered as an AMI with the boot mode, architecture, ENA and SR-IOV flags
it needs, tagged, and optionally made public. Through boto3: credentials and
endpoint come from its usual places (AWS_* variables, ~/.aws).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import boto3
import boto3.exceptions
import botocore.exceptions

from tasks.errors import StageFailed
from tasks.model.arch import Firmware
from tasks.model.layout import CellFiles
from tasks.model.matrix import Cell
from tasks.model.records import Manifest
from tasks.model.settings import Ec2Settings
from tasks.progress import StageProgress
from tasks.stages import diskimage
from tasks.stages.compress import qemu_img_convert

ROOT_DEVICE = "/dev/xvda"


class Ec2Failed(StageFailed):
    pass


@contextlib.contextmanager
def _aws(what: str) -> Iterator[None]:
    """AWS's errors as one line saying what was being done (boto3 retries transient ones itself)."""
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


def upload(cell: Cell, files: CellFiles, manifest: Manifest, settings: Ec2Settings) -> dict:
    region = settings.region
    bucket, prefix = settings.bucket, settings.prefix.strip("/")
    name = manifest.name
    tags = [
        {"Key": "Name", "Value": name},
        {"Key": "debian:release", "Value": cell.release.name},
        {"Key": "debian:vendor", "Value": cell.vendor.name},
        {"Key": "debian:version", "Value": manifest.version},
    ]
    s3 = boto3.client("s3", region_name=region)
    ec2 = boto3.client("ec2", region_name=region)
    key = f"{prefix}/{name}.vmdk" if prefix else f"{name}.vmdk"
    with diskimage.raw_disk(files) as raw, diskimage.scratch_dir(files) as scratch:
        vmdk = scratch / "disk.vmdk"
        qemu_img_convert(
            ["-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized", str(raw), str(vmdk)], f"vmdk {cell.name}"
        )
        with (
            StageProgress(f"S3 upload {name}", total=vmdk.stat().st_size) as progress,
            _aws(f"uploading {vmdk.name} to s3://{bucket}/{key}"),
        ):
            s3.upload_file(str(vmdk), bucket, key, Callback=lambda sent: progress.update(advance=sent))
    try:
        with _aws(f"importing s3://{bucket}/{key} as a snapshot"):
            task = ec2.import_snapshot(
                Description=name,
                DiskContainer={"Description": name, "Format": "VMDK", "UserBucket": {"S3Bucket": bucket, "S3Key": key}},
                TagSpecifications=[{"ResourceType": "import-snapshot-task", "Tags": tags}],
            )
            snapshot = wait_for_import(ec2, task["ImportTaskId"], float(settings.import_timeout))
        with _aws(f"registering {name} from {snapshot}"):
            ami = ec2.register_image(
                **register_request(
                    cell, name, snapshot, f"Debian {cell.release.version} ({cell.vendor.name}, {cell.arch.name})"
                )
            )
            ec2.create_tags(Resources=[ami["ImageId"], snapshot], Tags=tags)
            if settings.public:
                ec2.modify_image_attribute(ImageId=ami["ImageId"], LaunchPermission={"Add": [{"Group": "all"}]})
    finally:
        with _aws(f"deleting s3://{bucket}/{key}"):
            s3.delete_object(Bucket=bucket, Key=key)  # the snapshot holds the image now
    return {
        "platform": "ec2",
        "region": region,
        "ami": ami["ImageId"],
        "snapshot": snapshot,
        "public": settings.public,
    }
