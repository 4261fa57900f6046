"""Microsoft Azure: the image becomes a managed image.

The disk, as a fixed-size VHD, is uploaded as a page blob (only the 4 MiB
pages that hold data) to a storage container, then Azure Resource Manager
creates an image from it (Hyper-V generation 2: UEFI). Through requests:

- AZURE_STORAGE_SAS: a SAS token for the container (write, create);
- AZURE_ACCESS_TOKEN: a bearer token for management.azure.com.

Blob storage has a local emulator (Azurite), which the tests use; Resource
Manager has none, so its requests are tested as built and sent to a local
recording server.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import requests

from tasks.errors import StageFailed
from tasks.model.layout import CellFiles
from tasks.model.matrix import Cell
from tasks.model.records import Manifest
from tasks.model.settings import AzureSettings
from tasks.progress import StageProgress
from tasks.stages import diskimage
from tasks.stages.compress import MIB, qemu_img_convert

BLOB_API = "2021-08-06"
COMPUTE_API = "2023-09-01"
PAGE = 4 * MIB  # the largest Put Page


class AzureFailed(StageFailed):
    pass


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise AzureFailed(f"{name} is not set (README.md, release: Azure)")
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
    session = requests.Session()
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


def image_request(cell: Cell, manifest: Manifest, settings: AzureSettings, blob_url: str) -> tuple[str, dict]:
    """Resource Manager's URL and body for a managed image made from blob_url."""
    endpoint = settings.api_endpoint.rstrip("/")
    url = (
        f"{endpoint}/subscriptions/{settings.subscription}/resourceGroups/{settings.resource_group}"
        f"/providers/Microsoft.Compute/images/{manifest.name}?api-version={COMPUTE_API}"
    )
    body = {
        "location": settings.location,
        "tags": {"debian-release": cell.release.name, "debian-version": manifest.version},
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


def create_image(url: str, body: dict, token: str, timeout: float = 1800) -> dict:
    headers = {"Authorization": f"Bearer {token}"}
    answer = requests.put(url, json=body, headers=headers, timeout=60)
    if answer.status_code not in (200, 201):
        raise AzureFailed(f"creating the image: HTTP {answer.status_code} {answer.text[:300]}")
    status_url = answer.headers.get("Azure-AsyncOperation")
    deadline = time.monotonic() + timeout
    while status_url:
        status = requests.get(status_url, headers=headers, timeout=60).json()
        if status.get("status") == "Succeeded":
            break
        if status.get("status") in ("Failed", "Canceled"):
            raise AzureFailed(f"creating the image: {status.get('error') or status.get('status')}")
        if time.monotonic() > deadline:
            raise AzureFailed(f"the image was not created within {timeout:.0f} s")
        time.sleep(10)
    return answer.json()


def upload(cell: Cell, files: CellFiles, manifest: Manifest, settings: AzureSettings) -> dict:
    sas, token = _env("AZURE_STORAGE_SAS"), _env("AZURE_ACCESS_TOKEN")
    blob_url = f"{settings.container_url.rstrip('/')}/{manifest.name}.vhd"
    if "vhd.tar.xz" in cell.vendor.formats:
        with diskimage.member(files, "vhd.tar.xz", "disk.vhd") as vhd:
            upload_page_blob(vhd, blob_url, sas, f"Azure upload {manifest.name}")
    else:
        with diskimage.raw_disk(files) as raw, diskimage.scratch_dir(files) as scratch:
            vhd = scratch / "disk.vhd"
            qemu_img_convert(
                ["-f", "raw", "-O", "vpc", "-o", "subformat=fixed,force_size=on", str(raw), str(vhd)],
                f"vhd {cell.name}",
            )
            upload_page_blob(vhd, blob_url, sas, f"Azure upload {manifest.name}")
    url, body = image_request(cell, manifest, settings, blob_url)
    made = create_image(url, body, token)
    return {"platform": "azure", "image": made.get("id", url.split("?")[0]), "blob": blob_url}
