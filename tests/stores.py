"""The storages the tests publish to, each with an independent way to look inside it: a directory,
WebDAV (real nginx) and S3 (moto's emulator). The `store` fixture (conftest.py) gives each in turn."""

from __future__ import annotations

from pathlib import Path

import boto3

from tasks.storage import Location
from tasks.system.checksum import parse_sums


class Store:
    """A storage backend under test, and an independent way to look inside it (and to damage it)."""

    def __init__(self, location, listing, reading, writing):
        self.location, self.listing, self.reading, self.writing = location, listing, reading, writing

    def files(self, directory: str) -> set[str]:
        return set(self.listing(directory))

    def read(self, path: str) -> bytes | None:
        return self.reading(path)

    def write(self, path: str, data: bytes) -> None:
        """Change what storage holds behind the publisher's back."""
        self.writing(path, data)

    def sums(self, directory: str) -> dict[str, str]:
        return parse_sums((self.read(f"{directory}/SHA512SUMS") or b"").decode())


def _directory_store(location: Location, root: Path) -> Store:
    """A storage that is a directory on this machine (itself, or served by nginx), looked into directly."""

    def listing(directory):
        d = root / directory
        return [p.name for p in d.iterdir() if p.is_file()] if d.is_dir() else []

    def writing(path, data):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)

    return Store(location, listing, lambda p: (root / p).read_bytes() if (root / p).is_file() else None, writing)


def local_store(tmp_path):
    root = tmp_path / "public"
    return _directory_store(Location(root.as_uri()), root)


def dav_store(nginx, under: str = ""):
    return _directory_store(Location(f"{nginx.url}/{under}".rstrip("/")), nginx.root / "images" / under)


def s3_store(moto, monkeypatch, bucket="images"):
    for key, value in moto.env().items():
        monkeypatch.setenv(key, value)
    client = boto3.client("s3")
    client.create_bucket(Bucket=bucket)

    def listing(directory):
        found = client.list_objects_v2(Bucket=bucket, Prefix=f"debian/{directory}/")
        return [
            o["Key"].rsplit("/", 1)[1]
            for o in found.get("Contents", [])
            if "/" not in o["Key"][len(f"debian/{directory}/") :]
        ]

    def reading(path):
        try:
            return client.get_object(Bucket=bucket, Key=f"debian/{path}")["Body"].read()
        except client.exceptions.NoSuchKey:
            return None

    def writing(path, data):
        client.put_object(Bucket=bucket, Key=f"debian/{path}", Body=data)  # as any client writes: S3 keeps its CRC32

    return Store(Location(f"s3://{bucket}/debian"), listing, reading, writing)
