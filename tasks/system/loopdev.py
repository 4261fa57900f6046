"""Loop devices: find the ones backed by our files and detach them.

Mounts made during a build live in a private mount namespace and vanish with
it; loop devices are global, so the builder detaches every loop device its
build attached, whatever way the build ended.

A loop device is matched to a file by device and inode number, not by path:
the kernel reports the path through the mount the file was opened from, and
once that mount (a bind mount in the build's namespace) is gone the path
reads as "/disk.raw".
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from tasks.errors import StageFailed, add_cleanup_failure
from tasks.system import proc


class LoopDevicesBusy(StageFailed):
    pass


def attached() -> dict[str, tuple[str, int]]:
    """Map each attached loop device to its backing file's ("major:minor", inode)."""
    out = proc.run(["losetup", "--list", "--json", "--output", "NAME,BACK-MAJ:MIN,BACK-INO"])
    if not out.strip():
        return {}
    return {
        d["name"]: (str(d.get("back-maj:min") or "").strip(), int(d.get("back-ino") or 0))
        for d in json.loads(out)["loopdevices"]
    }


def _file_ids(directory: Path) -> set[tuple[str, int]]:
    ids = set()
    if directory.is_dir():
        for path in directory.rglob("*"):
            if path.is_file() and not path.is_symlink():
                st = path.stat()
                ids.add((f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}", st.st_ino))
    return ids


def backed_by(directory: Path) -> list[str]:
    """Loop devices whose backing file is one of the files inside directory."""
    ids = _file_ids(directory)
    return sorted(dev for dev, backing in attached().items() if backing in ids)


def detach_all(directory: Path, timeout: float = 60.0) -> None:
    """Detach every loop device backed by a file inside directory.

    A device still in use (its file system being torn down with its mount
    namespace) is marked to detach itself when released; wait for that.
    """
    for dev in backed_by(directory):
        try:
            proc.run(["losetup", "--detach", dev])
        except proc.CommandFailed:
            pass  # already gone, or detached by someone else meanwhile
    if not proc.wait_until(lambda: not backed_by(directory), timeout):
        raise LoopDevicesBusy(
            f"loop devices still attached to files in {directory} after {timeout:.0f} s: "
            f"{', '.join(backed_by(directory))} (see losetup --list; detach with losetup -d)"
        )


@contextlib.contextmanager
def detached_afterwards(directory: Path, timeout: float = 60.0) -> Iterator[None]:
    """Detach the loop devices of directory's files when the block ends, however it ends.

    If the block failed, a device that will not detach is noted on that
    failure rather than raised in its place: the build's own error is what
    the user must read first.
    """
    try:
        yield
    except BaseException as error:
        try:
            detach_all(directory, timeout)
        except StageFailed as cleanup:
            add_cleanup_failure(error, cleanup)
        raise
    detach_all(directory, timeout)
