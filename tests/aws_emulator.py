"""moto's AWS emulator, completed with what the EC2 release uses and moto lacks.

moto 5 does not implement ImportSnapshot and DescribeImportSnapshotTasks, and
its RegisterImage keeps only an image's name and description; nor does it
know EnableImageDeprecation. This module
adds them to moto's EC2 service in the test process, before the server
starts; the code under test still talks to it with boto3 over a real socket,
as to AWS. The import reads the image from moto's S3 and refuses what EC2
would refuse (no such object, an unknown format); the registration checks
its snapshot and keeps every attribute, for the tests to read back with
DescribeImages.
"""

from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime

from moto.core.responses import ActionResult
from moto.ec2.responses import EC2Response
from moto.s3.models import s3_backends

_TASK_IDS = itertools.count(1)
IMPORT_TASKS: dict[str, dict] = {}


def _s3_object_size(account_id: str, bucket: str, key: str) -> int:
    backend = s3_backends[account_id]["aws"]
    found = backend.get_object(bucket, key)
    assert found is not None, f"s3://{bucket}/{key}"
    return found.size


def import_snapshot(self: EC2Response) -> ActionResult:
    container = self._get_param("DiskContainer") or {}
    user_bucket = container.get("UserBucket") or {}
    bucket, key = user_bucket.get("S3Bucket"), user_bucket.get("S3Key")
    fmt = (container.get("Format") or "").upper()
    if fmt not in ("RAW", "VHD", "VMDK"):
        raise ValueError(f"ImportSnapshot: unsupported disk format {fmt!r}")
    size = _s3_object_size(self.current_account, str(bucket), str(key))  # raises for a missing object
    volume = self.ec2_backend.create_volume(size=max(1, math.ceil(size / 2**30)), zone_name=f"{self.region}a")
    snapshot = self.ec2_backend.create_snapshot(volume.id, self._get_param("Description") or "imported")
    self.ec2_backend.delete_volume(volume.id)
    task_id = f"import-snap-{next(_TASK_IDS):08x}"
    IMPORT_TASKS[task_id] = {
        "ImportTaskId": task_id,
        "Description": self._get_param("Description"),
        "SnapshotTaskDetail": {
            "DiskImageSize": float(size),
            "Format": fmt,
            "Progress": "100",
            "SnapshotId": snapshot.id,
            "Status": "completed",
            "UserBucket": {"S3Bucket": bucket, "S3Key": key},
        },
    }
    return ActionResult(IMPORT_TASKS[task_id])


def describe_import_snapshot_tasks(self: EC2Response) -> ActionResult:
    wanted = self._get_param("ImportTaskIds") or list(IMPORT_TASKS)
    return ActionResult({"ImportSnapshotTasks": [IMPORT_TASKS[t] for t in wanted if t in IMPORT_TASKS]})


def register_image(self: EC2Response) -> ActionResult:
    mappings = self._get_param("BlockDeviceMappings") or []
    root = self._get_param("RootDeviceName")
    root_mapping = next((m for m in mappings if m.get("DeviceName") == root), None)
    if root_mapping is None or "SnapshotId" not in (root_mapping.get("Ebs") or {}):
        raise ValueError("RegisterImage: the root device needs an EBS snapshot")
    snapshot = self.ec2_backend.get_snapshot(root_mapping["Ebs"]["SnapshotId"])  # raises when unknown
    ami = self.ec2_backend.register_image(self._get_param("Name"), self._get_param("Description", ""))
    ami.ebs_snapshot = snapshot
    ami.architecture = self._get_param("Architecture")
    ami.boot_mode = self._get_param("BootMode")
    ami.root_device_name = root
    ami.root_device_type = "ebs"
    ami.virtualization_type = self._get_param("VirtualizationType")
    ami.sriov = ami.sriov_net_support = self._get_param("SriovNetSupport")
    ami.ena_support = self._get_bool_param("EnaSupport")
    ami.imds = ami.imds_support = self._get_param("ImdsSupport")
    ami.registered_mappings = mappings
    return ActionResult({"ImageId": ami.id})


def enable_image_deprecation(self: EC2Response) -> ActionResult:
    """EC2 keeps the time to the second, in UTC, and shows it in DescribeImages."""
    [ami] = self.ec2_backend.describe_images(ami_ids=[self._get_param("ImageId")])  # raises when unknown
    when = self._get_param("DeprecateAt")
    moment = when if isinstance(when, datetime) else datetime.fromisoformat(str(when).replace("Z", "+00:00"))
    ami.deprecation_time = moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    return ActionResult({"Return": True})


def install() -> None:
    """Teach moto's EC2 service these calls (idempotent)."""
    # setattr: moto's class gains methods it does not declare, which mypy would refuse.
    for name, method in (
        ("import_snapshot", import_snapshot),
        ("describe_import_snapshot_tasks", describe_import_snapshot_tasks),
        ("register_image", register_image),
        ("enable_image_deprecation", enable_image_deprecation),
    ):
        setattr(EC2Response, name, method)
