"""The disk the release step starts from (instance test, platform uploads):
the raw disk when it is still in the work directory, otherwise unpacked,
sparse, from the cell's tar.xz (a CI release job has the artifacts, not
disk.raw)."""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tasks.errors import StageFailed
from tasks.model.layout import CellFiles


@contextlib.contextmanager
def member(files: CellFiles, fmt: str, name: str) -> Iterator[Path]:
    """`name` (disk.raw, disk.vhd) from the cell's `fmt` artifact, unpacked sparse."""
    archive = files.artifact(fmt)
    if not archive.exists():
        raise StageFailed(f"{files.cell.name}: no {archive.name} to take {name} from")
    with tempfile.TemporaryDirectory(prefix="release-", dir=files.dir) as scratch:
        unpacked = subprocess.run(
            ["tar", "--extract", "--sparse", "--file", str(archive), "--directory", scratch, name],
            capture_output=True,
            text=True,
        )
        if unpacked.returncode != 0:
            raise StageFailed(f"{files.cell.name}: cannot take {name} from {archive}: {unpacked.stderr.strip()}")
        yield Path(scratch) / name


@contextlib.contextmanager
def raw_disk(files: CellFiles) -> Iterator[Path]:
    if files.raw.exists():
        yield files.raw
    else:
        with member(files, "tar.xz", "disk.raw") as raw:
            yield raw


@contextlib.contextmanager
def scratch_dir(files: CellFiles) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="release-", dir=files.dir) as scratch:
        yield Path(scratch)
