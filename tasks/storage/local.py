"""Storage in a local directory (file:// URLs, the default)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

from tasks.system import atomic
from tasks.progress import StageProgress
from tasks.storage.backend import CHUNK, Backend


class LocalBackend(Backend):
    def __init__(self, root: Path):
        self.root = root
        self.name = root.as_uri()

    def _path(self, path: str) -> Path:
        return self.root / path

    def size(self, path: str) -> int | None:
        target = self._path(path)
        return target.stat().st_size if target.is_file() else None

    def read_text(self, path: str) -> str | None:
        target = self._path(path)
        return target.read_text() if target.is_file() else None

    def upload(self, local: Path, path: str, progress: StageProgress) -> None:
        target = self._path(path)
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
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        os.chmod(target, 0o644)

    def download(self, path: str, sink: Callable[[bytes], None]) -> None:
        with open(self._path(path), "rb") as f:
            while chunk := f.read(CHUNK):
                sink(chunk)

    def move(self, source: str, target: str) -> None:
        atomic.commit(self._path(source), self._path(target))

    def delete(self, path: str) -> None:
        self._path(path).unlink(missing_ok=True)

    def delete_dir(self, path: str) -> None:
        shutil.rmtree(self._path(path), ignore_errors=True)

    def list_dirs(self, path: str) -> list[str]:
        directory = self._path(path)
        if not directory.is_dir():
            return []
        return sorted(p.name for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
