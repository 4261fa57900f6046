"""What the builder image is made from, and the name it gets from them.

The standard library only: tools/setup-host asks it for the project's
requirements before the virtual environment holds anything, and
tools/in-builder for the image's name with the host's python3.

    python3 -P tasks/builder/inputs.py tag            # localhost/images-builder:<digest>
    python3 -P tasks/builder/inputs.py archive DIR    # the image's archive under work directory DIR
    python3 -P tasks/builder/inputs.py requirements   # the Python environment's packages
"""

from __future__ import annotations

import hashlib
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
# The Debian release the builder is made of, whatever the host runs.
RELEASE = "trixie"
# Bump when the image is made differently by code outside FILES (the base's settle and tar: stages/base.py).
FORMAT = 1
# Files whose content is the image's: the packages, the Python and npm environments, and what makes it.
FILES = (
    "tools/packages",
    "pyproject.toml",
    "tools/npm/package.json",
    "tools/npm/package-lock.json",
    "tasks/builder/inputs.py",
    "tasks/builder/install.sh",
    "tasks/builder/image.py",
    "tasks/builder/oci.py",
)
ROLES = ("build", "test", "node")  # of tools/packages: the image has them all,
# but these, which only install and build the npm tools: install.sh purges them once it has.
BUILD_ONLY = ("npm", "g++", "make", "libnode-dev")
NAME = "localhost/images-builder"
# The image's place in a work directory.
SUBDIR = "builder"


def digest(repo: Path = REPO) -> str:
    """The image's inputs, hashed: 16 hex digits name it."""
    h = hashlib.sha256(f"release {RELEASE}\nformat {FORMAT}\n".encode())
    for name in FILES:
        h.update(f"{hashlib.sha256((repo / name).read_bytes()).hexdigest()}  {name}\n".encode())
    return h.hexdigest()[:16]


def tag(repo: Path = REPO) -> str:
    return f"{NAME}:{digest(repo)}"


def archive(workdir: Path, repo: Path = REPO) -> Path:
    """The OCI archive `doit builder` makes."""
    return workdir / SUBDIR / f"images-builder-{digest(repo)}.oci.tar"


def packages(repo: Path = REPO, roles: tuple[str, ...] = ROLES) -> list[str]:
    """tools/packages' names of these roles, in its order."""
    names: list[str] = []
    for line in (repo / "tools/packages").read_text().splitlines():
        role, *rest = line.split("#", 1)[0].split() or [""]
        if role in roles:
            names += [name for name in rest if name not in names]
    return names


def requirements(repo: Path = REPO) -> list[str]:
    """The Python environment: the project's dependencies and its tests'."""
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"], *project["optional-dependencies"]["test"]]


def main(argv: list[str]) -> int:
    if argv[:1] == ["tag"]:
        print(tag())
    elif argv[:1] == ["archive"] and len(argv) == 2:
        print(archive(Path(argv[1]).resolve()))
    elif argv[:1] == ["requirements"]:
        print("\n".join(requirements()))
    else:
        print("usage: inputs.py tag | archive WORKDIR | requirements", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
