"""The sbom stage: what an image contains, as SPDX 2.3 and CycloneDX JSON.

debsbom (Siemens' SBOM tool for Debian systems) reads dpkg's status database
the build kept (CellFiles.dpkg_status) and writes both documents: every
installed binary package with its version, architecture and package URL
(pkg:deb/debian/...), linked to its source package and source version, and
the image itself as the root component. It is used rather than writing the
formats by hand: it knows Debian's fields (Source: with its own version,
binNMUs, Multi-Arch) and its output validates against both schemas.

Every value that would vary between two runs is fixed from the build: the
timestamp is its SOURCE_DATE_EPOCH, the SPDX namespace and the CycloneDX
serial number derive from the cell and version (tasks/stages/identity.py),
and debsbom runs with a fixed hash seed (it orders some lists as sets).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from tasks.errors import StageFailed
from tasks.model.layout import SBOM_FORMATS, CellFiles
from tasks.model.matrix import Cell
from tasks.model.records import BuildInfo
from tasks.stages import identity
from tasks.system import atomic

# debsbom's console script, installed beside this environment's Python.
DEBSBOM = Path(sys.executable).with_name("debsbom")
# The public name's suffix of each format: debian-12-nocloud-amd64-<version>.spdx.json
PUBLIC_SUFFIX = {kind: f"{kind}.json" for kind in SBOM_FORMATS}


class SbomFailed(StageFailed):
    pass


def sbom_config(cell: Cell) -> dict:
    return {"formats": list(SBOM_FORMATS), "distro": distro_name(cell)}


def distro_name(cell: Cell) -> str:
    """The SBOM's root component: the image without its version (debian-12-nocloud-amd64)."""
    return f"debian-{cell.release.version}-{cell.vendor.name}-{cell.arch.name}"


def generate(cell: Cell, files: CellFiles, version: str | None = None) -> None:
    """Write the cell's SBOMs (CellFiles.sboms) from the dpkg status its build kept."""
    if not files.dpkg_status.is_file():
        raise SbomFailed(f"{cell.name}: no {files.dpkg_status}: build the cell again (doit build:{cell.name})")
    info = BuildInfo.read(files.build_info)
    version = version or info.version
    timestamp = datetime.fromtimestamp(info.source_date_epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    with tempfile.TemporaryDirectory(prefix=".sbom-", dir=files.dir) as scratch:
        root = Path(scratch) / "root"
        (root / "var/lib/dpkg").mkdir(parents=True)
        shutil.copyfile(files.dpkg_status, root / "var/lib/dpkg/status")
        out = Path(scratch) / "sbom"
        command = [
            str(DEBSBOM),
            "generate",
            "--root",
            str(root),
            "--out",
            str(out),
            *(arg for kind in SBOM_FORMATS for arg in ("--sbom-type", kind)),
            "--distro-name",
            distro_name(cell),
            "--distro-version",
            version,
            "--distro-supplier",
            "Debian",
            "--distro-arch",
            cell.arch.name,
            "--timestamp",
            timestamp,
            "--spdx-namespace",
            f"{identity.NAMESPACE_URL}/sbom/{cell.image_name(version)}",
            "--cdx-serialnumber",
            str(identity.identifier(cell.name, version, "sbom/cdx")),
            "--validate",
        ]
        # debsbom orders some lists as Python's sets do: a fixed hash seed makes
        # the same inputs give the same document.
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        result = subprocess.run(command, capture_output=True, text=True, env=env)
        made = {kind: out.with_name(f"sbom.{kind}.json") for kind in SBOM_FORMATS}
        if result.returncode != 0 or not all(path.is_file() for path in made.values()):
            lines = (result.stdout + result.stderr).splitlines()
            errors = [line for line in lines if not line.startswith("WARNING:")] or lines
            raise SbomFailed(
                f"{cell.name}: debsbom failed (exit status {result.returncode}) on {files.dpkg_status}:\n"
                + "\n".join(f"  {line}" for line in errors[-15:])
            )
        for kind, path in made.items():
            atomic.commit(path, files.sbom(kind))
