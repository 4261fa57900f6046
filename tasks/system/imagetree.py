"""An image's root file system read without mounting it.

The pinned debugfs (tasks/system/toolstree.py) copies the ext4 file system
in the disk image's root partition into a directory (`rdump`): contents,
owners and times of files and directories, and symbolic links. No loop
device, no mount, no kernel file system driver. rdump's copies lose the
setuid, setgid and sticky bits (it gives each file its owner after its
mode), so every mode is set again from debugfs's own listing (`ls -p`).
debugfs does not set a link's own time, and leaves device nodes and FIFOs
out (an image has none outside /dev, which is empty).
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tasks.errors import StageFailed
from tasks.stages import diskassembly


class UnreadableImage(StageFailed):
    pass


def root_partition(image: Path, tools: Path) -> diskassembly.Partition:
    """The partition holding the root file system: partition 1 of our layout, else the largest."""
    parts = diskassembly.partitions(image, tools)
    if not parts:
        raise UnreadableImage(f"{image}: no partition table")
    return parts.get(diskassembly.ROOT) or max(parts.values(), key=lambda p: p.size)


def device(image: Path, tools: Path) -> str:
    """The root file system as e2fsprogs' programs take it: the image file at the partition's offset."""
    return f"{image}?offset={root_partition(image, tools).offset}"


def debugfs(image: Path, tools: Path, *requests: str, write: bool = False) -> str:
    """Run debugfs requests on the root file system; their output. A request that fails fails this."""
    command = [str(tools / "debugfs"), *(["-w"] if write else []), "-f", "-", device(image, tools)]
    done = subprocess.run(command, input="\n".join(requests) + "\n", capture_output=True, text=True)
    errors = [
        line
        for line in done.stderr.splitlines()
        if line.strip() and not line.startswith("debugfs ") and not line.startswith("debugfs:")
    ]
    if done.returncode != 0 or errors:
        detail = errors[-1] if errors else f"exit status {done.returncode}"
        raise UnreadableImage(f"{image}: debugfs {requests[0].split()[0]}: {detail}")
    return done.stdout


def read(image: Path, tools: Path, path: str) -> bytes:
    """One file's content."""
    with tempfile.NamedTemporaryFile(dir=image.parent, prefix=".read-") as out:
        debugfs(image, tools, f"dump -p {path} {out.name}")
        return Path(out.name).read_bytes()


def modes(image: Path, tools: Path) -> dict[str, int]:
    """Every path of the root file system (from /, without it) and its mode, type bits included:
    debugfs lists each level of directories in one run."""
    found: dict[str, int] = {}
    level = ["/"]
    while level:
        listed = debugfs(image, tools, *(f"ls -p {directory}" for directory in level))
        level, directory = [], ""
        for line in listed.splitlines():
            if line.startswith("debugfs: ls -p "):
                directory = line.removeprefix("debugfs: ls -p ").rstrip("/")
                continue
            fields = line.split("/")  # /inode/mode/uid/gid/name/size/
            # (lost+found's empty slots list as inode 0 without a name)
            if len(fields) < 7 or fields[5] in ("", ".", "..") or fields[1] == "0":
                continue
            path, mode = f"{directory}/{fields[5]}", int(fields[2], 8)
            found[path] = mode
            if stat.S_ISDIR(mode):
                level.append(path)
    return found


@contextlib.contextmanager
def extracted(image: Path, tools: Path, scratch: Path | None = None) -> Iterator[Path]:
    """The whole root file system, copied into a temporary directory (removed afterwards)."""
    with tempfile.TemporaryDirectory(prefix=".tree-", dir=scratch or image.parent) as into:
        debugfs(image, tools, f"rdump / {into}")
        root = Path(into)
        for path, mode in modes(image, tools).items():
            if not stat.S_ISLNK(mode) and (root / path.lstrip("/")).exists():
                os.chmod(root / path.lstrip("/"), stat.S_IMODE(mode))
        yield root
