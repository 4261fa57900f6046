"""Microsoft Azure: the image becomes a Compute Gallery image version and/or a managed image.

The disk, as a fixed-size VHD, is uploaded as a page blob (only the 4 MiB
pages that hold data) to a storage container. Azure Resource Manager then
makes from it, as configured:

- an image version in a Compute Gallery (how Debian publishes on Azure): the
  version <release major>.<YYYYMMDD>.<serial> of the gallery's image
  definition <gallery_image>-<arch>, replicated to location and target_regions;
- a managed image (Hyper-V generation 2: UEFI), the older way.

Each step is in the release journal once done, and Resource Manager's PUT is
idempotent: a release run again does only what is left. Through requests:

- AZURE_STORAGE_SAS: a SAS token for the container (write, create);
- AZURE_ACCESS_TOKEN: a bearer token for management.azure.com.

Blob storage has a local emulator (Azurite), which the tests use; Resource
Manager has none, so its requests are tested as built and sent to a local
recording server.
"""

from __future__ import annotations

import functools
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tasks.errors import StageFailed
from tasks.model.layout import CellFiles
from tasks.model.matrix import Cell
from tasks.model.records import Manifest
from tasks.model.settings import PlatformSettings, boolean, names, plain_url, required, setting, text
from tasks.model.version import NotAVersion, Version
from tasks.progress import StageProgress
from tasks.release.journal import Part, scratch
from tasks.release.platforms import Expired, Platform, beyond
from tasks.stages import diskimage
from tasks.stages.compress import MIB, qemu_img_convert
from tasks.system import http

BLOB_API = "2021-08-06"
COMPUTE_API = "2023-09-01"
GALLERY_API = "2023-07-03"
PAGE = 4 * MIB  # the largest Put Page
AZURE_REGION = re.compile(r"^[a-z][a-z0-9]+$")


@dataclass(frozen=True)
class AzureSettings(PlatformSettings):
    subscription: str = required("the Azure subscription", text())
    resource_group: str = required("the resource group the image goes to", text())
    location: str = required("the Azure region", text())
    container_url: str = required("the blob container the VHD is uploaded to", plain_url())
    gallery: str = setting(
        "", "the Compute Gallery an image version goes to (how Debian publishes); none when empty", text()
    )
    gallery_image: str = setting(
        "", "the gallery's image definition (an -<arch> suffix is added); needed with a gallery", text()
    )
    storage_account_id: str = setting(
        "", "the resource id of the storage account holding container_url; needed with a gallery", text()
    )
    target_regions: tuple[str, ...] = setting(
        (), "regions the gallery version is replicated to, besides location", names(AZURE_REGION, "region", "regions")
    )
    managed_image: bool = setting(True, "also make a managed image (the way before galleries)", boolean())
    api_endpoint: str = setting("https://management.azure.com", "Azure Resource Manager", plain_url())

    def conflicts(self) -> list[tuple[str, str]]:
        found = []
        if self.gallery:
            found += [
                (key, f"needed with gallery {self.gallery!r}")
                for key in ("gallery_image", "storage_account_id")
                if not getattr(self, key)
            ]
        elif not self.managed_image:
            found.append(("managed_image", "false without a gallery makes no image at all"))
        return found


class AzureFailed(StageFailed):
    pass


def env_value(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise AzureFailed(f"{name} is not set (docs/gitlab-ci.md, Platforms)")
    return value


def data_pages(path: Path) -> list[tuple[int, int]]:
    """(offset, length) of the PAGE-aligned ranges of path that hold data (SEEK_DATA)."""
    pages: set[int] = set()
    fd = os.open(path, os.O_RDONLY)
    try:
        size, offset = os.fstat(fd).st_size, 0
        while offset < size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole is left
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            pages.update(range(start - start % PAGE, end, PAGE))
            offset = end
    finally:
        os.close(fd)
    return [(page, min(PAGE, size - page)) for page in sorted(pages)]


def upload_page_blob(vhd: Path, blob_url: str, sas: str, label: str) -> None:
    size = vhd.stat().st_size
    if size % 512:
        raise AzureFailed(f"{vhd} is not a whole number of 512-byte pages")
    session = http.Session()
    session.headers["x-ms-version"] = BLOB_API
    created = session.put(
        f"{blob_url}?{sas}",
        headers={"x-ms-blob-type": "PageBlob", "x-ms-blob-content-length": str(size), "Content-Length": "0"},
    )
    if created.status_code != 201:
        raise AzureFailed(f"creating {blob_url}: HTTP {created.status_code} {created.text[:300]}")
    pages = data_pages(vhd)
    with open(vhd, "rb") as f, StageProgress(label, total=sum(length for _, length in pages)) as progress:
        for offset, length in pages:
            f.seek(offset)
            data = f.read(length)
            if not any(data):
                continue  # a page blob reads zeros where nothing was written
            answer = session.put(
                f"{blob_url}?comp=page&{sas}",
                data=data,
                headers={"x-ms-page-write": "update", "x-ms-range": f"bytes={offset}-{offset + length - 1}"},
            )
            if answer.status_code != 201:
                raise AzureFailed(
                    f"writing pages {offset}+{length} of {blob_url}: HTTP {answer.status_code} {answer.text[:300]}"
                )
            progress.update(advance=length)


def _group_path(settings: AzureSettings) -> str:
    return f"/subscriptions/{settings.subscription}/resourceGroups/{settings.resource_group}"


def images_path(settings: AzureSettings) -> str:
    """The resource group's managed images."""
    return f"{_group_path(settings)}/providers/Microsoft.Compute/images"


def gallery_versions_path(settings: AzureSettings, arch: str) -> str:
    """The versions of the gallery's image definition for arch."""
    return (
        f"{_group_path(settings)}/providers/Microsoft.Compute/galleries/{settings.gallery}"
        f"/images/{settings.gallery_image}-{arch}/versions"
    )


def tags(cell: Cell, manifest: Manifest) -> dict[str, str]:
    """What a release's resources carry: how `doit cleanup` finds them and their cell and version."""
    return {"debian-release": cell.release.name, "debian-version": manifest.version, "debian-cell": cell.name}


def image_request(cell: Cell, manifest: Manifest, settings: AzureSettings, blob_url: str) -> tuple[str, dict]:
    """Resource Manager's URL and body for a managed image made from blob_url."""
    endpoint = settings.api_endpoint.rstrip("/")
    url = f"{endpoint}{images_path(settings)}/{manifest.name}?api-version={COMPUTE_API}"
    body = {
        "location": settings.location,
        "tags": tags(cell, manifest),
        "properties": {
            "hyperVGeneration": "V2",
            "storageProfile": {
                "osDisk": {
                    "osType": "Linux",
                    "osState": "Generalized",
                    "blobUri": blob_url,
                    "caching": "ReadWrite",
                    "storageAccountType": "Standard_LRS",
                }
            },
        },
    }
    return url, body


def gallery_version(cell: Cell, version: str) -> str:
    """The gallery image version of an image version: major.minor.patch, each a whole number."""
    try:
        parsed = Version.parse(version)
    except NotAVersion as error:
        raise AzureFailed(f"no Azure gallery version (major.minor.patch) for it: {error}") from None
    major = int(cell.release.version) if cell.release.version.isdigit() else 0
    return f"{major}.{int(parsed.date)}.{parsed.serial}"


def gallery_request(cell: Cell, manifest: Manifest, settings: AzureSettings, blob_url: str) -> tuple[str, dict]:
    """Resource Manager's URL and body for the gallery image version made from blob_url."""
    endpoint = settings.api_endpoint.rstrip("/")
    version = gallery_version(cell, manifest.version)
    url = f"{endpoint}{gallery_versions_path(settings, cell.arch.name)}/{version}?api-version={GALLERY_API}"
    regions = [settings.location, *(r for r in settings.target_regions if r != settings.location)]
    body = {
        "location": settings.location,
        "tags": tags(cell, manifest),
        "properties": {
            "publishingProfile": {
                "targetRegions": [
                    {"name": region, "regionalReplicaCount": 1, "storageAccountType": "Standard_LRS"}
                    for region in regions
                ],
                "excludeFromLatest": False,
            },
            "storageProfile": {
                "osDiskImage": {
                    "hostCaching": "ReadWrite",
                    "source": {"storageAccountId": settings.storage_account_id, "uri": blob_url},
                }
            },
        },
    }
    return url, body


def _wait(status_url: str | None, headers: dict, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while status_url:
        status = http.request("GET", status_url, headers=headers, timeout=60).json()
        if status.get("status") == "Succeeded":
            return
        if status.get("status") in ("Failed", "Canceled"):
            raise AzureFailed(f"{what}: {status.get('error') or status.get('status')}")
        if time.monotonic() > deadline:
            raise AzureFailed(f"{what}: not done within {timeout:.0f} s")
        time.sleep(10)


class ResourceManager:
    """Listing and deleting resources (the cleanup), waiting for asynchronous operations."""

    def __init__(self, settings: AzureSettings, token: str):
        self.endpoint = settings.api_endpoint.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"}

    def list(self, path: str, api: str) -> list[dict]:
        found: list[dict] = []
        url: str | None = f"{self.endpoint}{path}?api-version={api}"
        while url:
            answer = http.request("GET", url, headers=self.headers, timeout=60)
            if answer.status_code == 404:
                return found  # no such gallery image definition (yet)
            if answer.status_code != 200:
                raise AzureFailed(f"listing {path}: HTTP {answer.status_code} {answer.text[:300]}")
            page = answer.json()
            found += page.get("value", [])
            url = page.get("nextLink")
        return found

    def delete(self, resource_id: str, api: str, timeout: float = 1800) -> None:
        answer = http.request(
            "DELETE", f"{self.endpoint}{resource_id}?api-version={api}", headers=self.headers, timeout=60
        )
        if answer.status_code not in (200, 202, 204, 404):
            raise AzureFailed(f"deleting {resource_id}: HTTP {answer.status_code} {answer.text[:300]}")
        _wait(answer.headers.get("Azure-AsyncOperation"), self.headers, f"deleting {resource_id}", timeout)


def delete_blob(blob_url: str, sas: str) -> None:
    answer = http.request("DELETE", f"{blob_url}?{sas}", headers={"x-ms-version": BLOB_API}, timeout=60)
    if answer.status_code not in (202, 404):  # 404: gone already (a version and an image share a blob)
        raise AzureFailed(f"deleting {blob_url}: HTTP {answer.status_code} {answer.text[:300]}")


def put_resource(url: str, body: dict, token: str, what: str, timeout: float = 1800) -> dict:
    """PUT a Resource Manager resource (idempotent) and wait for its asynchronous operation."""
    headers = {"Authorization": f"Bearer {token}"}
    answer = http.request("PUT", url, json=body, headers=headers, timeout=60)
    if answer.status_code not in (200, 201):
        raise AzureFailed(f"{what}: HTTP {answer.status_code} {answer.text[:300]}")
    _wait(answer.headers.get("Azure-AsyncOperation"), headers, what, timeout)
    return answer.json()


def upload_vhd(cell: Cell, files: CellFiles, manifest: Manifest, blob_url: str, sas: str) -> None:
    label = f"Azure upload {manifest.name}"
    if "vhd.tar.xz" in cell.vendor.formats:
        with diskimage.member(files, "vhd.tar.xz", "disk.vhd") as vhd:
            upload_page_blob(vhd, blob_url, sas, label)
    else:
        with diskimage.raw_disk(files) as raw, diskimage.scratch_dir(files) as scratch_space:
            vhd = scratch_space / "disk.vhd"
            qemu_img_convert(
                ["-f", "raw", "-O", "vpc", "-o", "subformat=fixed,force_size=on", str(raw), str(vhd)],
                f"vhd {cell.name}",
            )
            upload_page_blob(vhd, blob_url, sas, label)


def upload(
    cell: Cell, files: CellFiles, manifest: Manifest, settings: AzureSettings, journal: Part | None = None
) -> dict:
    journal = journal or scratch()
    sas, token = env_value("AZURE_STORAGE_SAS"), env_value("AZURE_ACCESS_TOKEN")
    blob_url = f"{settings.container_url.rstrip('/')}/{manifest.name}.vhd"
    if settings.gallery:
        gallery_version(cell, manifest.version)  # refused before anything is uploaded
    if not journal.recall("blob"):
        upload_vhd(cell, files, manifest, blob_url, sas)
        journal.remember("blob", blob_url)
    made: dict = {"platform": Azure.name, "blob": blob_url}
    if settings.gallery:
        made["gallery_image_version"] = journal.recall("gallery_image_version")
        if not made["gallery_image_version"]:
            url, body = gallery_request(cell, manifest, settings, blob_url)
            answer = put_resource(url, body, token, "creating the gallery image version")
            made["gallery_image_version"] = answer.get("id", url.split("?")[0])
            journal.remember("gallery_image_version", made["gallery_image_version"])
    if settings.managed_image:
        made["image"] = journal.recall("image")
        if not made["image"]:
            url, body = image_request(cell, manifest, settings, blob_url)
            made["image"] = put_resource(url, body, token, "creating the image").get("id", url.split("?")[0])
            journal.remember("image", made["image"])
    return made


def _tag(resource: dict, key: str) -> str:
    return (resource.get("tags") or {}).get(f"debian-{key}", "")


def expired(settings: AzureSettings, keep: int, architectures: Iterable[str] = ()) -> list[Expired]:
    """The gallery image versions and managed images a release made (tagged debian-cell) beyond the
    newest `keep` of their cell, with the VHD blobs they were made from."""
    manager = ResourceManager(settings, env_value("AZURE_ACCESS_TOKEN"))
    sas = env_value("AZURE_STORAGE_SAS")
    found = []

    def remove(resource_id: str, api: str, blob: str) -> None:
        manager.delete(resource_id, api)
        delete_blob(blob, sas)  # the VHD a version or image was made from

    if settings.gallery:
        for arch in architectures:
            versions = [v for v in manager.list(gallery_versions_path(settings, arch), GALLERY_API) if _tag(v, "cell")]
            for version in beyond(versions, lambda v: _tag(v, "cell"), lambda v: _tag(v, "version"), keep):
                blob = version["properties"]["storageProfile"]["osDiskImage"]["source"]["uri"]
                found.append(
                    Expired(
                        Azure.name,
                        f"gallery {settings.gallery}",
                        _tag(version, "cell"),
                        _tag(version, "version"),
                        f"{settings.gallery_image}-{arch}/{version['name']}",
                        (blob,),
                        functools.partial(remove, version["id"], GALLERY_API, blob),
                    )
                )
    if settings.managed_image:
        images = [i for i in manager.list(images_path(settings), COMPUTE_API) if _tag(i, "cell")]
        for image in beyond(images, lambda i: _tag(i, "cell"), lambda i: _tag(i, "version"), keep):
            blob = image["properties"]["storageProfile"]["osDisk"]["blobUri"]
            found.append(
                Expired(
                    Azure.name,
                    settings.resource_group,
                    _tag(image, "cell"),
                    _tag(image, "version"),
                    image["name"],
                    (blob,),
                    functools.partial(remove, image["id"], COMPUTE_API, blob),
                )
            )
    return found


class Azure(Platform):
    name = "azure"
    settings = AzureSettings
    upload = staticmethod(upload)
    expired = staticmethod(expired)
