"""Loop devices: find the ones backed by our files and detach them.

Mounts made during a build live in a private mount namespace and vanish with
it; loop devices are global, so the builder detaches, by backing file, every
loop device its build attached, whatever way the build ended.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import proc


def attached() -> dict[str, str]:
    """Map each attached loop device to the path of its backing file."""
    out = proc.run(["losetup", "--list", "--json", "--output", "NAME,BACK-FILE"])
    if not out.strip():
        return {}
    return {d["name"]: (d.get("back-file") or "") for d in json.loads(out)["loopdevices"]}


def _backing_path(back_file: str) -> Path:
    # The kernel appends " (deleted)" when the backing file was removed.
    return Path(back_file.removesuffix(" (deleted)"))


def backed_by(directory: Path) -> list[str]:
    """Loop devices whose backing file lies inside directory."""
    directory = directory.resolve()
    return [
        dev
        for dev, back in attached().items()
        if back and _backing_path(back).is_relative_to(directory)
    ]


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
        raise RuntimeError(f"loop devices still attached to files in {directory}: {', '.join(backed_by(directory))}")
