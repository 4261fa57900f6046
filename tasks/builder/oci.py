"""A file tree's tarball as an OCI image archive: one layer, its config, a manifest.

The OCI image layout (github.com/opencontainers/image-spec) in a tar file,
as `podman load`, `skopeo copy oci-archive:...` and `buildah pull` read it.
Every member has fixed times and owners, so the same layer and config give
the same archive and the same manifest digest.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tasks.system import atomic, checksum

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
INDEX = "application/vnd.oci.image.index.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"


@dataclass(frozen=True)
class Blob:
    media_type: str
    digest: str  # sha256:<hex>
    size: int

    def descriptor(self, **annotations: str) -> dict:
        described = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        return {**described, "annotations": annotations} if annotations else described

    @property
    def member(self) -> str:
        return "blobs/sha256/" + self.digest.removeprefix("sha256:")

    @classmethod
    def of_bytes(cls, media_type: str, data: bytes) -> Blob:
        return cls(media_type, "sha256:" + hashlib.sha256(data).hexdigest(), len(data))

    @classmethod
    def of_file(cls, media_type: str, path: Path) -> Blob:
        return cls(media_type, "sha256:" + checksum.sha256_file(path), path.stat().st_size)


def write(
    layer_tar: Path,
    target: Path,
    ref: str,
    arch: str,
    epoch: int,
    env: dict[str, str],
    labels: dict[str, str],
    cmd: tuple[str, ...] = ("/bin/bash",),
) -> str:
    """Write the OCI archive of one uncompressed layer to target; return the manifest's digest.
    ref: the name podman load gives it (repository:tag)."""
    gzipped = layer_tar.with_name(layer_tar.name + ".gz")
    with open(gzipped, "wb") as out:
        # -n: no name or time in the gzip header, so the same tar gives the same blob.
        subprocess.run(["pigz", "-n", "-6", "-c", str(layer_tar)], stdout=out, check=True)
    layer = Blob.of_file(LAYER, gzipped)
    created = datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    config = _json(
        {
            "created": created,
            "architecture": arch,
            "os": "linux",
            "config": {"Env": [f"{k}={v}" for k, v in env.items()], "Cmd": list(cmd), "Labels": labels},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:" + checksum.sha256_file(layer_tar)]},
            "history": [{"created": created, "created_by": "tasks/builder/image.py"}],
        }
    )
    config_blob = Blob.of_bytes(CONFIG, config)
    manifest = _json(
        {"schemaVersion": 2, "mediaType": MANIFEST, "config": config_blob.descriptor(), "layers": [layer.descriptor()]}
    )
    manifest_blob = Blob.of_bytes(MANIFEST, manifest)
    index = _json({"schemaVersion": 2, "mediaType": INDEX, "manifests": [manifest_blob.descriptor(**{REF_NAME: ref})]})
    with atomic.output(target) as partial, tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as archive:
        _add_bytes(archive, "oci-layout", _json({"imageLayoutVersion": "1.0.0"}), epoch)
        _add_bytes(archive, "index.json", index, epoch)
        _add_bytes(archive, config_blob.member, config, epoch)
        _add_bytes(archive, manifest_blob.member, manifest, epoch)
        info = tarfile.TarInfo(layer.member)
        info.size, info.mtime, info.mode = layer.size, epoch, 0o644
        with open(gzipped, "rb") as f:
            archive.addfile(info, f)
    gzipped.unlink()
    return manifest_blob.digest


def _json(value: dict) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _add_bytes(archive: tarfile.TarFile, name: str, data: bytes, epoch: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), epoch, 0o644
    archive.addfile(info, io.BytesIO(data))
