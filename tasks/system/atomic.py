"""Write every output under a temporary name and rename it into place.

A reader (doit, a person, the publish step) then sees either the previous
complete file or the new complete file, never a half-written one; an
interrupted run leaves only hidden ``.<name>.<pid>.partial`` files, which the
next attempt removes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def partial_path(target: Path, keep_suffix: bool = False) -> Path:
    """The temporary name for target: hidden, marked partial, unique per process.

    keep_suffix keeps the target's extension last, for tools that choose the
    format by it (fai-diskimage, qemu-img).
    """
    suffix = target.suffix if keep_suffix else ""
    return target.with_name(f".{target.name}.{os.getpid()}.partial{suffix}")


def remove_stale_partials(target: Path) -> None:
    """Remove what interrupted earlier attempts left for this target."""
    for stale in target.parent.glob(f".{target.name}.*.partial*"):
        remove(stale)


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(partial: Path, target: Path, durable: bool = True) -> None:
    """Make a finished partial file the target (durably: on disk before and after the rename)."""
    if durable:
        fsync_path(partial)
    os.replace(partial, target)
    if durable:
        fsync_path(target.parent)


@contextlib.contextmanager
def output(target: Path, keep_suffix: bool = False, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path; rename it to target on success, delete it on failure.

    durable=False: still whole or absent, but not forced to disk (a file whose loss costs only
    a task run again: tasks/taskstate.py)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(target)
    partial = partial_path(target, keep_suffix)
    try:
        yield partial
        commit(partial, target, durable)
    finally:
        remove(partial)


def write_text(target: Path, text: str, durable: bool = True) -> None:
    with output(target, durable=durable) as partial:
        partial.write_text(text)


def write_json(target: Path, data: Any, durable: bool = True) -> None:
    write_text(target, json.dumps(data, indent=2, sort_keys=False) + "\n", durable)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())
