"""Checksums: SHA-512 for what is published, SHA-256 where a format asks for it
(provenance, SBOM references), CRC32 where S3 keeps it for us, xxh3 for doit's
up-to-date checks."""

from __future__ import annotations

import base64
import errno
import hashlib
import os
import re
import zlib
from pathlib import Path

import xxhash
from doit.dependency import FileChangedChecker

from tasks.system import atomic

CHUNK = 4 << 20


def file_digest(path: Path, algorithm: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


def sha512_file(path: Path) -> str:
    return file_digest(path, "sha512")


def sha512_sparse(path: Path) -> str:
    """SHA-512 of a file, its holes hashed as the zeros they read as without reading them
    (a raw disk is mostly holes: half the time of reading it whole)."""
    digest = hashlib.sha512()
    zeros = memoryview(bytes(CHUNK))
    with open(path, "rb") as f:
        size, position = os.fstat(f.fileno()).st_size, 0
        for start, length in [*_data_segments(f.fileno(), size), (size, 0)]:
            for hole in range(position, start, CHUNK):
                digest.update(zeros[: min(CHUNK, start - hole)])
            f.seek(start)
            for _ in range(0, length, CHUNK):
                digest.update(f.read(min(CHUNK, start + length - f.tell())))
            position = start + length
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    return file_digest(path, "sha256")


def crc32_and_sha512(path: Path) -> tuple[str, str]:
    """A file's CRC32 as S3 writes it (four bytes, big-endian, in base64) and its SHA-512, in one read."""
    crc, sha = 0, hashlib.sha512()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            crc = zlib.crc32(chunk, crc)
            sha.update(chunk)
    return base64.b64encode(crc.to_bytes(4, "big")).decode(), sha.hexdigest()


_SHA256 = re.compile(r"[0-9a-f]{64}")


def kept_sha256_path(path: Path) -> Path:
    """Where sha256_kept keeps a file's digest: beside it, hidden."""
    return path.with_name(f".{path.name}.sha256")


def sha256_kept(path: Path) -> str:
    """sha256_file of a large file that many builds name (a shared base), hashed once.

    The digest is kept beside the file with the size, mtime and inode it was
    computed for; a file changed or replaced since (or a record that does not
    read) is hashed again and the record rewritten. Hashing a 200 MB base
    takes about 0.3 s here, which every build of its images paid.
    """
    st = path.stat()
    stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}
    record = kept_sha256_path(path)
    try:
        kept = atomic.read_json(record)
        if {key: kept.get(key) for key in stamp} == stamp and _SHA256.fullmatch(str(kept.get("sha256"))):
            return kept["sha256"]
    except (OSError, ValueError, AttributeError):
        pass  # missing or unreadable: hashed again below
    digest = sha256_file(path)
    atomic.write_json(record, {**stamp, "sha256": digest})
    return digest


def parse_sums(text: str) -> dict[str, str]:
    """name -> hex digest, from `sha512sum` output (text or binary mode)."""
    sums = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        digest, _, name = line.partition(" ")
        sums[name.lstrip(" *")] = digest
    return sums


def format_sums(sums: dict[str, str]) -> str:
    """The format `sha512sum --check` reads, sorted by name."""
    return "".join(f"{digest}  {name}\n" for name, digest in sorted(sums.items()))


# --------------------------------------------------------------------------
# doit's file checker


def _data_segments(fd: int, size: int):
    """(offset, length) of the data in a file, skipping holes (SEEK_DATA/SEEK_HOLE)."""
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as error:
            if error.errno == errno.ENXIO:  # only a hole is left
                return
            raise
        end = os.lseek(fd, start, os.SEEK_HOLE)
        yield start, end - start
        offset = end


def xxh3_file(path: str) -> str:
    """xxh3-128 of a file's data and where it lies.

    A sparse file is read segment by segment, so the holes of a 30 GiB raw
    disk cost nothing; offsets and lengths are hashed with the data, so the
    same bytes at another place give another digest.
    """
    digest = xxhash.xxh3_128()
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        digest.update(size.to_bytes(8, "little"))
        for start, length in _data_segments(fd, size):
            digest.update(start.to_bytes(8, "little") + length.to_bytes(8, "little"))
            os.lseek(fd, start, os.SEEK_SET)
            remaining = length
            while remaining:
                chunk = os.read(fd, min(CHUNK, remaining))
                if not chunk:
                    break
                digest.update(chunk)
                remaining -= len(chunk)
    finally:
        os.close(fd)
    return digest.hexdigest()


class XXH3Checker(FileChangedChecker):
    """doit's file checker, with xxh3 instead of md5, each file hashed once per run.

    State is (mtime, size, digest): an unchanged mtime means unchanged
    content, a changed size means changed content, and otherwise the digest
    decides. Several tasks depend on the same large files (disk.raw feeds
    compress and boottest); digests are kept in this process, keyed by path,
    mtime, size and inode, so a run hashes each file at most once. doit
    checks and saves every task's state in its main process, also with -n.
    """

    hashed: dict[tuple, str] = {}
    hash_count = 0  # for tests and the benchmark

    @classmethod
    def digest(cls, path: str, st: os.stat_result) -> str:
        key = (path, st.st_mtime_ns, st.st_size, st.st_ino)
        if key not in cls.hashed:
            cls.hashed[key] = xxh3_file(path)
            cls.hash_count += 1
        return cls.hashed[key]

    def check_modified(self, file_path, file_stat, state):
        mtime, size, digest = state
        if file_stat.st_mtime == mtime:
            return False
        if file_stat.st_size != size:
            return True
        return digest != self.digest(file_path, file_stat)

    def get_state(self, dep, current_state):
        st = os.stat(dep)
        if current_state and current_state[0] == st.st_mtime:
            return None  # unchanged since it was saved
        return st.st_mtime, st.st_size, self.digest(dep, st)
