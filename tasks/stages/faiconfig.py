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
from collections.abc import Iterable
from pathlib import Path

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


def selected_files(config_space: Path, classes: Iterable[str]) -> list[Path]:
    """The config-space files a build with these classes reads, sorted."""
    classes = set(classes)
    return [path for path, owner in _files_by_owner(config_space) if owner is None or owner in classes]
