"""What changed in an image since its previous published version.

Compares two package lists (a manifest's `packages`): packages added,
removed, upgraded and downgraded, each with its source package, and for every
upgraded one the Debian changelog entries between the two versions, read from
the new image's own changelogs (CellFiles.changelogs, kept by the build). The
publish stage writes the comparison with the cell's previous version in
storage as changes.json and changes.txt beside the image; `doit changes`
compares any two versions or cells.
"""

from __future__ import annotations

import gzip
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = 1
# A binNMU's suffix: its source version is the binary version without it.
_BINNMU = re.compile(r"\+b\d+$")
_CHANGELOG_HEAD = re.compile(rb"^(\S+) \(([^)]+)\)")


@dataclass(frozen=True)
class ImagePackages:
    """One side of a comparison: an image's packages, and what we know of their sources."""

    label: str  # debian-12-nocloud-amd64-20261125-1532
    version: str
    packages: dict[tuple[str, str], str]  # (name, architecture) -> version
    sources: dict[str, tuple[str, str]]  # name -> (source, source version)

    @classmethod
    def of(cls, label: str, version: str, packages: list[dict[str, str]], dpkg_status: Path | None = None):
        return cls(
            label,
            version,
            {(p["name"], p["architecture"]): p["version"] for p in packages},
            read_sources(dpkg_status) if dpkg_status and dpkg_status.is_file() else {},
        )

    def source_of(self, name: str, version: str) -> tuple[str, str]:
        return self.sources.get(name, (name, _BINNMU.sub("", version)))


def read_sources(dpkg_status: Path) -> dict[str, tuple[str, str]]:
    """Package -> (source, source version) from dpkg's status (Source: name (version))."""
    from debian.deb822 import Deb822  # python-debian: only when changes are written, never at task loading

    sources = {}
    with open(dpkg_status, encoding="utf-8", errors="replace") as status:
        for paragraph in Deb822.iter_paragraphs(status):
            name, version = paragraph.get("Package"), paragraph.get("Version", "")
            if not name:
                continue
            source = paragraph.get("Source", name)
            source_name, _, source_version = source.partition(" ")
            sources[name] = (source_name, source_version.strip("()") or version)
    return sources


def read_changelogs(tar_path: Path | None) -> dict[str, bytes]:
    """Source package -> its Debian changelog, from the build's changelogs.tar."""
    found: dict[str, bytes] = {}
    if tar_path is None or not tar_path.is_file():
        return found
    with tarfile.open(tar_path) as tar:
        for member in tar:
            handle = tar.extractfile(member) if member.isfile() else None
            if handle is None:
                continue
            try:
                text = gzip.decompress(handle.read())
            except (OSError, EOFError):
                continue  # not a gzip file: no changelog to read
            head = _CHANGELOG_HEAD.match(text)
            if head:
                found.setdefault(head.group(1).decode(), text)
    return found


def entries_between(changelog: bytes, old: str, new: str) -> list[str]:
    """The changelog's entries newer than old, up to and including new."""
    from debian.changelog import Changelog
    from debian.debian_support import Version

    entries = []
    for block in Changelog(changelog, strict=False):
        if block.version is None:
            continue
        if Version(str(block.version)) <= Version(old):
            break
        if Version(str(block.version)) <= Version(new):
            entries.append(str(block).strip())
    return entries


def compare(old: ImagePackages | None, new: ImagePackages, changelogs: dict[str, bytes] | None = None) -> dict:
    """changes.json: what `new` adds, removes, upgrades and downgrades against `old`."""
    from debian.debian_support import Version

    changelogs = changelogs or {}
    result: dict = {
        "schema": SCHEMA,
        "image": new.label,
        "version": new.version,
        "previous": old.label if old else None,
        "previous_version": old.version if old else None,
        "first_version": old is None,
        "added": [],
        "removed": [],
        "upgraded": [],
        "downgraded": [],
    }
    if old is None:
        return result
    for key in sorted(new.packages.keys() - old.packages.keys()):
        version = new.packages[key]
        result["added"].append(
            {"name": key[0], "architecture": key[1], "version": version, "source": new.source_of(key[0], version)[0]}
        )
    for key in sorted(old.packages.keys() - new.packages.keys()):
        version = old.packages[key]
        result["removed"].append(
            {"name": key[0], "architecture": key[1], "version": version, "source": old.source_of(key[0], version)[0]}
        )
    for key in sorted(old.packages.keys() & new.packages.keys()):
        before, after = old.packages[key], new.packages[key]
        if before == after:
            continue
        source, source_version = new.source_of(key[0], after)
        old_source_version = old.source_of(key[0], before)[1]
        change: dict[str, Any] = {
            "name": key[0],
            "architecture": key[1],
            "old": before,
            "new": after,
            "source": source,
        }
        if Version(after) > Version(before):
            text = changelogs.get(source)
            change["changelog"] = entries_between(text, old_source_version, source_version) if text else []
            result["upgraded"].append(change)
        else:
            result["downgraded"].append(change)
    return result


def render(changes: dict) -> str:
    """changes.txt: the comparison for people."""
    if changes["first_version"]:
        return f"{changes['image']}: first version (nothing published before to compare with)\n"
    lines = [f"{changes['image']}: changes since {changes['previous']}", ""]
    counts = {kind: len(changes[kind]) for kind in ("added", "removed", "upgraded", "downgraded")}
    if not any(counts.values()):
        return "\n".join([*lines, "No package changed.", ""])
    for item in changes["added"]:
        lines.append(f"added      {item['name']} ({item['architecture']}) {item['version']}  [source {item['source']}]")
    for item in changes["removed"]:
        lines.append(f"removed    {item['name']} ({item['architecture']}) {item['version']}")
    for kind in ("upgraded", "downgraded"):
        for item in changes[kind]:
            lines.append(
                f"{kind:<10} {item['name']} ({item['architecture']}) {item['old']} -> {item['new']}"
                f"  [source {item['source']}]"
            )
    lines += ["", ", ".join(f"{n} {kind}" for kind, n in counts.items())]
    shown = set()  # a source's entries once, however many of its packages changed
    for item in changes["upgraded"]:
        if item.get("changelog") and item["source"] not in shown:
            shown.add(item["source"])
            lines += ["", f"=== {item['source']} (changelog, {item['name']} {item['old']} -> {item['new']})", ""]
            lines += [entry + "\n" for entry in item["changelog"]]
    return "\n".join(lines).rstrip() + "\n"
