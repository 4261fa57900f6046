"""`doit reproduce:<cell>`: build a cell a second time and compare the two results.

The second build uses the same base tarball, the same package cache, the same
version (so the same SOURCE_DATE_EPOCH and disk identifiers:
tasks/stages/identity.py) and the same config space, in <cell>/rebuild/. Then:

- the disks, bit for bit: "identical" with the disk's SHA-512, or the
  differing MiB per partition;
- the file trees: every path of the root file system (copied out of each
  disk by debugfs, never mounted: tasks/system/imagetree.py) and of the EFI
  system partition (read with mtools), with its type, mode, owner, size,
  content digest, link target and modification time (a link's own time
  excepted: debugfs does not copy it);
- for each differing file, what differs inside it (diffoscope, when installed).

The report (reproducibility.json, and reproducibility.txt for people) says
"identical" or lists every difference; the manifest references it. The second
disk is removed afterwards (its build log stays).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from tasks import registry
from tasks.errors import StageFailed
from tasks.model import arch
from tasks.model.layout import CellFiles
from tasks.model.matrix import Cell
from tasks.model.plan import Plan
from tasks.model.records import BuildInfo
from tasks.stages import fai, faiconfig, imagefacts
from tasks.system import atomic, imagetree, toolstree
from tasks.system.checksum import sha256_kept, sha512_sparse

SCHEMA = 1
MIB = 1 << 20
DIFFOSCOPE_FILES = 20  # differing files shown by diffoscope, at most
DIFFOSCOPE_LINES = 200  # lines of diffoscope's output kept per file
_TYPES = {stat.S_IFREG: "f", stat.S_IFDIR: "d", stat.S_IFLNK: "l", stat.S_IFCHR: "c", stat.S_IFBLK: "b"}
FIELDS = ("type", "mode", "owner", "size", "content", "mtime")


class NotReproducible(StageFailed):
    pass


def reproduce(plan: Plan, cell: Cell) -> dict:
    files = CellFiles.of(plan.workdir, cell)
    if not files.raw.is_file() or not files.build_info.is_file():
        raise NotReproducible(f"{cell.name}: no first build in {files.dir}: doit build:{cell.name}")
    first = BuildInfo.read(files.build_info)
    # The build stage's own inputs, with the first build's version; every step
    # made again (none restored from the cell's step cache: tasks/stages/stepcache.py),
    # so that a first build that restored them is compared with one that did not.
    inputs = dataclasses.replace(
        registry.build_inputs(registry.cell_context(plan, cell)), version=first.version, step_cache=None
    )
    tarball = inputs.base
    if "base_sha256" not in first.inputs:
        raise NotReproducible(f"{cell.name} was built without the shared base: doit build:{cell.name}, then reproduce")
    if not tarball.is_file() or sha256_kept(tarball) != first.inputs["base_sha256"]:
        raise NotReproducible(
            f"{cell.name}: the base {tarball} changed since the first build; build the cell again "
            f"(doit build:{cell.name}), then reproduce it"
        )
    if faiconfig.tree_digest(plan.config_space) != first.inputs["config_space_sha256"]:
        raise NotReproducible(
            f"{cell.name}: the config space changed since the first build; build the cell again "
            f"(doit build:{cell.name}), then reproduce it"
        )
    rebuild = files.rebuild
    atomic.remove(rebuild.dir)
    fai.build(cell, rebuild, plan.matrix.build, inputs)
    try:
        report = compare_images(files.raw, rebuild.raw, toolstree.bin_dir(inputs.tools))
    finally:
        rebuild.raw.unlink(missing_ok=True)
    report = {
        "schema": SCHEMA,
        "cell": cell.name,
        "version": first.version,
        "checked": datetime.now(UTC).isoformat(timespec="seconds"),
        "first_build": first.build_started,
        "second_build": BuildInfo.read(rebuild.build_info).build_started,
        **report,
    }
    atomic.write_json(files.reproducibility, report)
    with atomic.output(files.reproducibility.with_suffix(".txt")) as partial:
        partial.write_text(render(report))
    print(render(report, details=20), end="")
    return report


def compare_images(first: Path, second: Path, tools: Path) -> dict:
    """Disks and trees of two raw images, read with the pinned tools (never mounted)."""
    disk = compare_disks(first, second)
    with tempfile.TemporaryDirectory(prefix=".compare-", dir=first.parent) as scratch:
        trees = compare_trees(first, second, Path(scratch), tools)
    return {**trees, **disk}


# --------------------------------------------------------------------------
# The disks, bit for bit


def partitions(image: Path) -> list[dict]:
    """Each partition's name, type and place in bytes (imagefacts reads the table)."""
    table = imagefacts.partition_table(str(image))
    sector = table["sector_size"]
    return [
        {
            "name": f"partition {p['number']}",
            "type": p["type"],
            "offset": p["start"] * sector,
            "bytes": p["size"] * sector,
        }
        for p in table["partitions"]
    ]


def region(parts: list[dict], offset: int) -> str:
    for part in parts:
        if part["offset"] <= offset < part["offset"] + part["bytes"]:
            return part["name"]
    return "partition table and gaps"


def compare_disks(first: Path, second: Path) -> dict:
    if first.stat().st_size != second.stat().st_size:
        return {"disk": "different", "disk_differences": {"size": [first.stat().st_size, second.stat().st_size]}}
    parts = partitions(first)
    differing: dict[str, int] = {}
    with open(first, "rb") as a, open(second, "rb") as b:
        offset = 0
        while chunk := a.read(MIB):
            if chunk != b.read(MIB):
                where = region(parts, offset)
                differing[where] = differing.get(where, 0) + 1
            offset += len(chunk)
    if differing:
        return {
            "disk": "different",
            "disk_differences": {f"{where}: MiB differing": count for where, count in differing.items()},
        }
    return {"disk": "identical", "disk_sha512": sha512_sparse(first), "disk_differences": {}}


# --------------------------------------------------------------------------
# The trees


def walk(root: Path) -> Iterator[tuple[str, dict]]:
    for directory, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = Path(directory, name)
            st = path.lstat()
            kind = _TYPES.get(stat.S_IFMT(st.st_mode), "o")
            if kind == "f":
                content = hashlib.sha256(path.read_bytes()).hexdigest()
            elif kind == "l":
                content = "-> " + os.readlink(path)
            else:
                content = ""
            yield (
                "/" + str(path.relative_to(root)),
                {
                    "type": kind,
                    "mode": oct(stat.S_IMODE(st.st_mode)),
                    "owner": f"{st.st_uid}:{st.st_gid}",
                    "size": st.st_size if kind == "f" else 0,
                    "content": content,
                    "mtime": 0 if kind == "l" else int(st.st_mtime),  # debugfs does not copy a link's own time
                },
            )


def differences(first: dict[str, dict], second: dict[str, dict]) -> list[dict]:
    found: list[dict] = []
    for path in sorted(first.keys() | second.keys()):
        a, b = first.get(path), second.get(path)
        if a is None or b is None:
            found.append({"path": path, "only_in": "first" if b is None else "second"})
            continue
        changed = {field: [a[field], b[field]] for field in FIELDS if a[field] != b[field]}
        if changed:
            found.append({"path": path, "kind": a["type"], **changed})
    return found


def _copy_esp(image: Path, target: Path) -> bool:
    """The EFI system partition's files, copied out with mtools (the kernel may lack vfat)."""
    esp = [p for p in partitions(image) if p["type"] == arch.ESP_PARTITION_TYPE]
    if not esp:
        return False
    target.mkdir()
    source = f"{image}@@{esp[0]['offset']}"
    subprocess.run(["mcopy", "-s", "-m", "-n", "-i", source, "::/*", str(target)], check=True, capture_output=True)
    return True


def diffoscope(first: Path, second: Path) -> list[str]:
    if not shutil.which("diffoscope"):
        return ["(diffoscope is not installed: apt-get install diffoscope-minimal)"]
    result = subprocess.run(
        ["diffoscope", "--text", "-", "--no-progress", "--max-report-size", "200000", str(first), str(second)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    return result.stdout.splitlines()[:DIFFOSCOPE_LINES]


def compare_trees(first: Path, second: Path, scratch: Path, tools: Path) -> dict:
    with contextlib.ExitStack() as stack:
        roots: list[tuple[Path, Path]] = []
        trees = []
        for index, image in enumerate((first, second)):
            root, esp = stack.enter_context(imagetree.extracted(image, tools, scratch)), scratch / f"esp{index}"
            roots.append((root, esp))
            tree = dict(walk(root))
            if _copy_esp(image, esp):
                tree.update({f"ESP:{path}": entry for path, entry in walk(esp)})
            trees.append(tree)
        found = differences(*trees)
        # What differs inside the files whose content differs.
        for item in [d for d in found if "content" in d and d["kind"] == "f"][:DIFFOSCOPE_FILES]:
            path = item["path"]
            pair = [
                (esp / path.removeprefix("ESP:/")) if path.startswith("ESP:") else (root / path.lstrip("/"))
                for root, esp in roots
            ]
            item["diffoscope"] = diffoscope(pair[0], pair[1])
    return {
        "trees": "different" if found else "identical",
        "entries": len(trees[0]),
        "tree_differences": found,
    }


# --------------------------------------------------------------------------
# The report, for people


def render(report: dict, details: int | None = None) -> str:
    lines = [
        f"{report['cell']} {report['version']}: file trees {report['trees']} ({report['entries']} entries), "
        f"disk {report['disk']}"
    ]
    shown = report["tree_differences"][:details] if details else report["tree_differences"]
    for item in shown:
        if "only_in" in item:
            lines.append(f"  {item['path']}: only in the {item['only_in']} build")
            continue
        what = ", ".join(f"{field} {item[field][0]} -> {item[field][1]}" for field in FIELDS if field in item)
        lines.append(f"  {item['path']}: {what}")
        if "diffoscope" in item and not details:
            lines += [f"      {line}" for line in item["diffoscope"]]
    if details and len(report["tree_differences"]) > details:
        lines.append(f"  ... {len(report['tree_differences']) - details} more: reproducibility.txt")
    if report.get("disk_sha512"):
        lines.append(f"  disk SHA-512 {report['disk_sha512']}")
    for where, count in report.get("disk_differences", {}).items():
        lines.append(f"  disk: {where} {count}")
    return "\n".join(lines) + "\n"
