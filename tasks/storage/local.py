"""Storage in a local directory (file:// URLs, the default).

The storage lock is an flock on <root>/.lock: the kernel releases it when its
holder ends, however it ends, so it is never stale. Every failure of the file
system (the root is a file, read-only, full) is one line naming the path.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from tasks.progress import StageProgress
from tasks.storage.backend import CHUNK, LOCK_NAME, Backend, Holder, Lease, PublishFailed, wait_announced
from tasks.system import atomic


class LocalBackend(Backend):
    def __init__(self, root: Path):
        self.root = root
        self.name = root.as_uri()

    def _path(self, path: str) -> Path:
        return self.root / path

    @contextlib.contextmanager
    def _os_errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except OSError as error:
            where = error.filename or self.root
            reason = error.strerror or str(error)
            if error.errno in (errno.ENOTDIR, errno.EEXIST) and not self.root.is_dir():
                reason = "not a directory"
            raise PublishFailed(f"{self.name}: {what}: {where}: {reason}") from None

    def size(self, path: str) -> int | None:
        target = self._path(path)
        with self._os_errors(f"checking {path}"):
            return target.stat().st_size if target.is_file() else None

    def read_text(self, path: str) -> str | None:
        target = self._path(path)
        with self._os_errors(f"reading {path}"):
            return target.read_text() if target.is_file() else None

    def upload(self, local: Path, path: str, progress: StageProgress) -> None:
        target = self._path(path)
        with self._os_errors(f"writing {path}"):
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(local, "rb") as src, open(target, "wb") as dst:
                while chunk := src.read(CHUNK):
                    dst.write(chunk)
                    progress.update(advance=len(chunk))
                dst.flush()
                os.fsync(dst.fileno())
            os.chmod(target, 0o644)

    def put_bytes(self, path: str, data: bytes) -> None:
        target = self._path(path)
        with self._os_errors(f"writing {path}"):
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            os.chmod(target, 0o644)

    def download(self, path: str, sink: Callable[[bytes], None]) -> None:
        with self._os_errors(f"reading {path}"), open(self._path(path), "rb") as f:
            while chunk := f.read(CHUNK):
                sink(chunk)

    def move(self, source: str, target: str) -> None:
        with self._os_errors(f"moving {source} to {target}"):
            atomic.commit(self._path(source), self._path(target))

    def delete(self, path: str) -> None:
        with self._os_errors(f"deleting {path}"):
            self._path(path).unlink(missing_ok=True)

    def delete_dir(self, path: str) -> None:
        with self._os_errors(f"deleting {path}"):
            shutil.rmtree(self._path(path), ignore_errors=True)

    def list_dirs(self, path: str) -> list[str]:
        directory = self._path(path)
        with self._os_errors(f"listing {path or '/'}"):
            if not directory.is_dir():
                return []
            return sorted(p.name for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))

    def acquire(self, holder: Holder) -> Lease:
        with self._os_errors("taking the storage lock"):
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.root / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                wait_announced(self.name, Holder.describe(os.pread(fd, 4096, 0)))
                fcntl.flock(fd, fcntl.LOCK_EX)
            os.ftruncate(fd, 0)
            os.pwrite(fd, holder.to_bytes(), 0)
        except BaseException:
            os.close(fd)
            raise

        def release() -> None:
            os.ftruncate(fd, 0)
            os.close(fd)  # closing the last descriptor releases the flock

        return Lease(self.name, None, release, self.lease_seconds)
