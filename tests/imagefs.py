"""Test helper: a raw disk image's root file system, read and changed without mounting it
(the pinned debugfs, as the builder reads an image: tasks/system/imagetree.py)."""

import contextlib
import json
import subprocess
import tempfile
from pathlib import Path

from tasks.system import imagetree, toolstree


def partitions(image: Path) -> list[dict]:
    table = json.loads(
        subprocess.run(["sfdisk", "--json", str(image)], capture_output=True, text=True, check=True).stdout
    )["partitiontable"]
    sector = table.get("sectorsize", 512)
    return [{**p, "offset": p["start"] * sector, "bytes": p["size"] * sector} for p in table["partitions"]]


def root_partition_index(image: Path) -> int:
    """The partition holding the root file system: the largest one."""
    parts = partitions(image)
    return max(range(len(parts)), key=lambda i: parts[i]["bytes"])


def tools(workdir: Path) -> Path:
    """The pinned tools of a work directory that built images (toolstree.bin_dir)."""
    return toolstree.bin_dir(toolstree.tree_dir(workdir))


def tools_of(image: Path) -> Path:
    """The tools of the work directory an image was built in (<workdir>/<cell>/disk.raw)."""
    return tools(image.parent.parent)


@contextlib.contextmanager
def tree(image: Path, bin_dir: Path | None = None):
    """The root file system, copied out of the image (a temporary directory: changes stay there)."""
    with imagetree.extracted(image, bin_dir or tools_of(image)) as root:
        yield root


def replace_file(image: Path, bin_dir: Path, path: str, content: str) -> None:
    """Write a file of the image's root file system anew, in place in the disk image."""
    with tempfile.NamedTemporaryFile("w", dir=image.parent, prefix=".new-") as new:
        new.write(content)
        new.flush()
        imagetree.debugfs(image, bin_dir, f"rm {path}", f"write {new.name} {path}", write=True)
