"""Which files of the FAI config space a build reads, given its classes.

FAI picks files by class name: class/<CLASS>.var, package_config/<CLASS>,
disk_config/<CLASS>, debconf/<CLASS>, scripts/<CLASS>/*, tests/<CLASS>/*,
hooks/<task>.<CLASS>[.sh], files/<path>/<CLASS>, basefiles/<CLASS>.tar.*.
A build depends on exactly those, plus the files every class shares (class
scripts, hooks/subroutines, fcopy's preinst/postinst/file-modes). A file this
module does not recognise counts as shared: a needless rebuild is better
than a stale image.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable
from pathlib import Path

# A package name in a package_config file (not a FAI directive or a class list).
_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
# NAME=value, NAME="value" or NAME='value' in a class/<CLASS>.var file.
_VARIABLE = re.compile(r"""^([A-Z_][A-Z0-9_]*)=["']?([^"'#]*)["']?\s*(?:#.*)?$""")

_BY_NAME = {"package_config", "disk_config", "debconf", "basefiles"}
_BY_DIRECTORY = {"scripts", "tests"}
_FCOPY_SHARED = {"preinst", "postinst", "file-modes"}


def owning_class(relative: Path) -> str | None:
    """The class a config-space file belongs to, or None when all share it."""
    top, *rest = relative.parts
    name = relative.name
    if top == "class":
        return name.removesuffix(".var") if name.endswith(".var") else None
    if top in _BY_NAME and len(rest) == 1:
        return name.split(".", 1)[0]  # CLASS, CLASS.gpg, CLASS.tar.xz
    if top in _BY_DIRECTORY and rest:
        return rest[0]  # scripts/CLASS/NN-name or scripts/CLASS
    if top == "hooks" and len(rest) == 1 and "." in name:
        return name.removesuffix(".sh").split(".", 1)[1]  # task.CLASS[.sh]
    if top == "files" and len(rest) >= 2 and name not in _FCOPY_SHARED:
        return name
    return None


@functools.lru_cache(maxsize=8)
def _files_by_owner(config_space: Path) -> tuple[tuple[Path, str | None], ...]:
    """Every file of the config space with its owning class, read once per run:
    the graph asks for every cell, and walking the tree is most of a no-op run."""
    found = []
    for path in sorted(config_space.rglob("*")):
        relative = path.relative_to(config_space)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            found.append((path, owning_class(relative)))
    return tuple(found)


def defined_classes(config_space: Path) -> set[str]:
    """The classes the config space does something for: those a file belongs
    to (EC2+ARM64 counts for both) and those a package list's PACKAGES line
    names (LINUX_GENERIC in package_config/AMD64)."""
    owners = {name for _, owner in _files_by_owner(config_space) if owner for name in owner.split("+")}
    named = {
        name for sections in package_lists(config_space).values() for _, condition, _ in sections for name in condition
    }
    return owners | named


def package_lists(config_space: Path) -> dict[str, list[tuple[str, tuple[str, ...], list[str]]]]:
    """The PACKAGES sections of every package_config file, by file name (its class), each file read once."""
    return {path.name: package_sections(path) for path in sorted((config_space / "package_config").glob("*"))}


def selected_files(config_space: Path, classes: Iterable[str]) -> list[Path]:
    """The config-space files a build with these classes reads, sorted."""
    classes = set(classes)
    return [path for path, owner in _files_by_owner(config_space) if owner is None or owner in classes]


def tree_digest(config_space: Path) -> str:
    """SHA-256 of the whole config space: each file's path, executable bit and
    content, in order (a checkout's own times and owners play no part)."""
    digest = hashlib.sha256()
    for path, _ in _files_by_owner(config_space):
        mode = "x" if path.stat().st_mode & 0o111 else "-"
        content = hashlib.sha256(path.read_bytes()).hexdigest()
        digest.update(f"{path.relative_to(config_space)}\0{mode}\0{content}\n".encode())
    return digest.hexdigest()


# --------------------------------------------------------------------------
# Reading FAI's file formats


def package_sections(path: Path) -> list[tuple[str, tuple[str, ...], list[str]]]:
    """(command, classes, packages) of each PACKAGES section of a package_config file."""
    sections: list[tuple[str, tuple[str, ...], list[str]]] = []
    for line in path.read_text().splitlines() if path.exists() else []:
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if words[0] == "PACKAGES":
            sections.append((words[1] if len(words) > 1 else "", tuple(words[2:]), []))
        elif sections:
            sections[-1][2].extend(w for w in words if _PACKAGE.match(w))
    return sections


def class_variables(config_space: Path, fai_class: str) -> dict[str, str]:
    """The plain NAME=value assignments of class/<CLASS>.var (what FAI sources)."""
    path = config_space / "class" / f"{fai_class}.var"
    found = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        match = _VARIABLE.match(line.strip())
        if match:
            found[match[1]] = match[2].strip()
    return found
