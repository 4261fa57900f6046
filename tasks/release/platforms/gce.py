"""Google Compute Engine: the image becomes a GCE image in its family.

The cell's image.tar.gz (disk.raw in an oldgnu tar, what GCE imports) is
uploaded to Cloud Storage, then the Compute API creates an image from it,
UEFI-capable, with the guest features Debian's images declare, in the
configured family (<family>-<arch>). Users find the newest image of a family
by its name; the family's older images are then marked DEPRECATED with the
new one as their replacement (deprecate_previous), as Debian does.

Idempotent: an image of the same name already there is taken, not made again,
and deprecating an image twice changes nothing; so a release run again after
a failure does the rest. Through requests, with GOOGLE_OAUTH_ACCESS_TOKEN as
the bearer token. Google's APIs have no local emulator here: the requests are
tested as built and answered by a local recording server.
"""

from __future__ import annotations

import functools
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass

import requests

from tasks.errors import StageFailed
from tasks.model.layout import CellFiles
from tasks.model.matrix import Cell
from tasks.model.records import Manifest
from tasks.model.settings import PlatformSettings, boolean, number, plain_url, required, setting, text
from tasks.model.version import Version
from tasks.progress import StageProgress
from tasks.release.journal import Part, scratch
from tasks.release.platforms import Expired, Platform, beyond
from tasks.system import http

GUEST_FEATURES = ["UEFI_COMPATIBLE", "VIRTIO_SCSI_MULTIQUEUE", "GVNIC", "SEV_CAPABLE"]
_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class GceSettings(PlatformSettings):
    project: str = required("the Google Cloud project", text())
    bucket: str = required("the Cloud Storage bucket the disk is imported from", text())
    family: str = setting("", "the image family (an -<arch> suffix is added); none when empty", text())
    deprecate_previous: bool = setting(
        True, "mark the family's previous image DEPRECATED, pointing to the new one", boolean()
    )
    api_endpoint: str = setting("https://compute.googleapis.com", "the Compute Engine API", plain_url())
    storage_endpoint: str = setting("https://storage.googleapis.com", "the Cloud Storage API", plain_url())
    timeout: float = setting(1800, "seconds the image creation may take", number(0, 86400))
    poll_seconds: float = setting(10, "seconds between two looks at the creation", number(0, 86400))


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
        "labels": {
            "debian-release": cell.release.name,
            "debian-version": manifest.version.lower(),
            "debian-cell": cell.name,
        },
    }
    if settings.family:
        body["family"] = f"{settings.family}-{cell.arch.name}"
    return url, body


def _check(answer: requests.Response, what: str) -> dict:
    if answer.status_code >= 400:
        raise GceFailed(f"{what}: HTTP {answer.status_code} {answer.text[:300]}")
    return answer.json()


def _call(method: str, url: str, what: str, **kwargs) -> requests.Response:
    try:
        return http.request(method, url, **kwargs)  # the bearer token stays with Google on a redirect
    except requests.RequestException as error:
        raise GceFailed(f"{what}: {error}") from None


class Compute:
    """The few Compute Engine calls a release makes, each waiting for its operation."""

    def __init__(self, settings: GceSettings, token: str):
        self.settings = settings
        self.images_url = f"{settings.api_endpoint.rstrip('/')}/compute/v1/projects/{settings.project}/global/images"
        self.headers = {"Authorization": f"Bearer {token}"}

    def image(self, name: str) -> dict | None:
        what = f"looking for image {name}"
        answer = _call("GET", f"{self.images_url}/{name}", what, headers=self.headers, timeout=60)
        return None if answer.status_code == 404 else _check(answer, what)

    def images(self, filter_: str) -> list[dict]:
        found, token = [], None
        while True:
            params = {"filter": filter_, **({"pageToken": token} if token else {})}
            answer = _call("GET", self.images_url, "listing images", params=params, headers=self.headers, timeout=60)
            page = _check(answer, "listing images")
            found += page.get("items", [])
            token = page.get("nextPageToken")
            if not token:
                return found

    def wait(self, operation: dict, what: str) -> None:
        status_url = operation.get("selfLink")
        deadline = time.monotonic() + float(self.settings.timeout)
        while operation.get("status") != "DONE":
            if not status_url:
                raise GceFailed(f"{what}: the answer names no operation to follow: {operation}")
            if time.monotonic() > deadline:
                raise GceFailed(f"{what}: not done in time (operation {operation.get('name')})")
            time.sleep(float(self.settings.poll_seconds))
            answer = _call("GET", status_url, f"waiting: {what}", headers=self.headers, timeout=60)
            operation = _check(answer, f"waiting: {what}")
        if operation.get("error"):
            raise GceFailed(f"{what}: {operation['error']}")

    def create(self, body: dict) -> None:
        what = "creating the image"
        answer = _call("POST", self.images_url, what, json=body, headers=self.headers, timeout=60)
        self.wait(_check(answer, what), what)

    def deprecate(self, name: str, replacement: str) -> None:
        body = {"state": "DEPRECATED", "replacement": replacement}
        what = f"deprecating {name}"
        answer = _call("POST", f"{self.images_url}/{name}/deprecate", what, json=body, headers=self.headers, timeout=60)
        self.wait(_check(answer, what), what)

    def delete(self, name: str) -> None:
        what = f"deleting {name}"
        answer = _call("DELETE", f"{self.images_url}/{name}", what, headers=self.headers, timeout=60)
        self.wait(_check(answer, what), what)


def token() -> str:
    value = os.environ.get("GOOGLE_OAUTH_ACCESS_TOKEN")
    if not value:
        raise GceFailed("GOOGLE_OAUTH_ACCESS_TOKEN is not set (docs/gitlab-ci.md, Platforms)")
    return value


def upload_object(archive, settings: GceSettings, object_name: str, headers: dict) -> None:
    storage = settings.storage_endpoint.rstrip("/")
    with open(archive, "rb") as f, StageProgress(f"GCS upload {object_name}", total=archive.stat().st_size) as bar:

        class Counted:
            len = archive.stat().st_size

            @staticmethod
            def read(size=-1):
                chunk = f.read(size if size and size > 0 else 4 << 20)
                bar.update(advance=len(chunk))
                return chunk

        _check(
            _call(
                "POST",
                f"{storage}/upload/storage/v1/b/{settings.bucket}/o",
                "uploading to Cloud Storage",
                params={"uploadType": "media", "name": object_name},
                data=Counted(),
                headers={**headers, "Content-Type": "application/gzip"},
                timeout=(10, 600),
            ),
            "uploading to Cloud Storage",
        )


def deprecate_older(compute: Compute, family: str, new: dict, version: str) -> list[str]:
    """Mark the family's older, still active images DEPRECATED in favour of new; their names."""
    deprecated = []
    for image in compute.images(f'family = "{family}"'):
        state = (image.get("deprecated") or {}).get("state", "ACTIVE")
        labelled = Version.of(image.get("labels", {}).get("debian-version", ""))
        older = labelled is not None and labelled < Version.parse(version)
        if image["name"] != new["name"] and state == "ACTIVE" and older:
            compute.deprecate(image["name"], new.get("selfLink") or f"{compute.images_url}/{new['name']}")
            deprecated.append(image["name"])
    return deprecated


def upload(
    cell: Cell, files: CellFiles, manifest: Manifest, settings: GceSettings, journal: Part | None = None
) -> dict:
    journal = journal or scratch()
    archive = files.artifact("tar.gz")
    compute = Compute(settings, token())
    name = image_name(manifest)
    object_name = f"{name}.tar.gz"
    _, body = image_request(cell, manifest, settings, f"https://storage.googleapis.com/{settings.bucket}/{object_name}")
    made = journal.recall("image") or compute.image(name)
    if made:
        print(f"gce: {name} exists already")
    else:
        if not archive.exists():
            raise GceFailed(f"{cell.name}: GCE imports {archive.name}, which this cell does not make")
        upload_object(archive, settings, object_name, compute.headers)
        compute.create(body)
        made = compute.image(name) or {"name": name}
    journal.remember("image", {"name": made["name"], "selfLink": made.get("selfLink")})
    family = body.get("family")
    deprecated = (
        deprecate_older(compute, family, made, manifest.version) if family and settings.deprecate_previous else []
    )
    return {
        "platform": Gce.name,
        "project": settings.project,
        "image": name,
        "family": family,
        "object": f"gs://{settings.bucket}/{object_name}",
        "deprecated": deprecated,
    }


def expired(settings: GceSettings, keep: int, architectures: Iterable[str] = ()) -> list[Expired]:
    """The images a release made (labelled debian-cell) beyond the newest `keep` of their cell."""
    compute = Compute(settings, token())
    images = compute.images("labels.debian-cell:*")
    old = beyond(images, lambda i: i["labels"]["debian-cell"], lambda i: i["labels"].get("debian-version", ""), keep)
    return [
        Expired(
            Gce.name,
            settings.project,
            i["labels"]["debian-cell"],
            i["labels"].get("debian-version", ""),
            i["name"],
            remove=functools.partial(compute.delete, i["name"]),
        )
        for i in old
    ]


class Gce(Platform):
    name = "gce"
    settings = GceSettings
    upload = staticmethod(upload)
    expired = staticmethod(expired)
