"""Google Compute Engine: the image becomes a GCE image.

The cell's image.tar.gz (disk.raw in an oldgnu tar, what GCE imports) is
uploaded to Cloud Storage, then the Compute API creates an image from it,
UEFI-capable, with the guest features Debian's images declare, in the
configured family. Through requests, with GOOGLE_OAUTH_ACCESS_TOKEN as the
bearer token. Google's APIs have no local emulator here: the requests are
tested as built and sent to a local recording server.
"""

from __future__ import annotations

import os
import re
import time

import requests

from tasks.errors import StageFailed
from tasks.model.layout import CellFiles
from tasks.model.matrix import Cell
from tasks.model.records import Manifest
from tasks.model.settings import GceSettings
from tasks.progress import StageProgress

GUEST_FEATURES = ["UEFI_COMPATIBLE", "VIRTIO_SCSI_MULTIQUEUE", "GVNIC", "SEV_CAPABLE"]
_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


class GceFailed(StageFailed):
    pass


def image_name(manifest: Manifest) -> str:
    name = manifest.name.lower().replace(".", "-").replace("_", "-")
    if not _NAME.match(name):
        raise GceFailed(f"{manifest.name!r} cannot be a GCE image name (lower case, digits, dashes, 63 at most)")
    return name


def image_request(cell: Cell, manifest: Manifest, settings: GceSettings, object_url: str) -> tuple[str, dict]:
    endpoint = settings.api_endpoint.rstrip("/")
    url = f"{endpoint}/compute/v1/projects/{settings.project}/global/images"
    features = [f for f in GUEST_FEATURES if cell.arch.name == "amd64" or f != "SEV_CAPABLE"]
    body = {
        "name": image_name(manifest),
        "description": f"Debian {cell.release.version} ({cell.vendor.name}, {cell.arch.name}), {manifest.version}",
        "rawDisk": {"source": object_url},
        "architecture": cell.arch.kind.spec.gce,
        "guestOsFeatures": [{"type": f} for f in features],
        "labels": {"debian-release": cell.release.name, "debian-version": manifest.version.lower()},
    }
    if settings.family:
        body["family"] = f"{settings.family}-{cell.arch.name}"
    return url, body


def _check(answer: requests.Response, what: str) -> dict:
    if answer.status_code >= 400:
        raise GceFailed(f"{what}: HTTP {answer.status_code} {answer.text[:300]}")
    return answer.json()


def upload(cell: Cell, files: CellFiles, manifest: Manifest, settings: GceSettings) -> dict:
    token = os.environ.get("GOOGLE_OAUTH_ACCESS_TOKEN")
    if not token:
        raise GceFailed("GOOGLE_OAUTH_ACCESS_TOKEN is not set (README.md, release: GCE)")
    archive = files.artifact("tar.gz")
    if not archive.exists():
        raise GceFailed(f"{cell.name}: GCE imports {archive.name}, which this cell does not make")
    headers = {"Authorization": f"Bearer {token}"}
    storage = settings.storage_endpoint.rstrip("/")
    object_name = f"{image_name(manifest)}.tar.gz"
    with open(archive, "rb") as f, StageProgress(f"GCS upload {object_name}", total=archive.stat().st_size) as bar:

        class Counted:
            len = archive.stat().st_size

            @staticmethod
            def read(size=-1):
                chunk = f.read(size if size and size > 0 else 4 << 20)
                bar.update(advance=len(chunk))
                return chunk

        _check(
            requests.post(
                f"{storage}/upload/storage/v1/b/{settings.bucket}/o",
                params={"uploadType": "media", "name": object_name},
                data=Counted(),
                headers={**headers, "Content-Type": "application/gzip"},
                timeout=(10, 600),
            ),
            "uploading to Cloud Storage",
        )
    url, body = image_request(
        cell, manifest, settings, f"https://storage.googleapis.com/{settings.bucket}/{object_name}"
    )
    operation = _check(requests.post(url, json=body, headers=headers, timeout=60), "creating the image")
    status_url = operation.get("selfLink")
    deadline = time.monotonic() + float(settings.timeout)
    while operation.get("status") != "DONE":
        if not status_url:
            raise GceFailed(f"creating the image: the answer names no operation to follow: {operation}")
        if time.monotonic() > deadline:
            raise GceFailed(f"the image was not created in time (operation {operation.get('name')})")
        time.sleep(float(settings.poll_seconds))
        operation = _check(requests.get(status_url, headers=headers, timeout=60), "waiting for the image")
    if operation.get("error"):
        raise GceFailed(f"creating the image: {operation['error']}")
    return {
        "platform": "gce",
        "project": settings.project,
        "image": body["name"],
        "family": body.get("family"),
        "object": f"gs://{settings.bucket}/{object_name}",
    }
