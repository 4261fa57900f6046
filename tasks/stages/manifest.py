"""The manifest: one JSON document describing a built and tested image.

It names the image, says how and when it was built (FAI classes, FAI
version, mirror), lists its artifacts and its SBOMs under their public names
with size and SHA-512, every installed package (name, version,
architecture), the boot test's result, the image's facts
(tasks/stages/imagefacts.py), the raw disk's size and SHA-512 (which a rebuild
from the same inputs matches: anyone can check a published image against their
own build) and, when `doit reproduce` made one, the reproducibility report's verdict.
Published beside the artifacts, it is what a user reads to know what an
image holds.
"""

from __future__ import annotations

from pathlib import Path

from tasks.errors import StageFailed
from tasks.model.arch import Format
from tasks.model.layout import SBOM_FORMATS, CellFiles
from tasks.model.matrix import Cell
from tasks.model.records import BootRecord, BuildInfo, Manifest, read_document
from tasks.stages import sbom
from tasks.system import atomic
from tasks.system.checksum import sha512_file, sha512_sparse

SCHEMA_VERSION = Manifest.VERSION


class ManifestFailed(StageFailed):
    pass


def public_name(image_name: str, fmt: str) -> str:
    """debian-12-nocloud-amd64-20261125-1532.tar.xz"""
    return f"{image_name}.{fmt}"


def read_packages(path: Path) -> list[dict[str, str]]:
    packages = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split("\t")
        if len(fields) != 3 or not all(fields):
            raise ManifestFailed(
                f"{path}:{number}: expected name<TAB>version<TAB>architecture, got {line!r}; "
                f"the build writes this file: build the cell again",
                log=path,
            )
        packages.append(dict(zip(("name", "version", "architecture"), fields, strict=True)))
    return packages


def describe(cell: Cell, files: CellFiles, version: str | None = None) -> Manifest:
    """The manifest; version, when given, overrides the one the build recorded."""
    info = BuildInfo.read(files.build_info)
    boot = BootRecord.read(files.boot_result)
    if not boot.passed:
        raise ManifestFailed(
            f"{cell.name}: no manifest for an image whose boot test did not pass "
            f"({boot.verdict}; see {', '.join(str(log) for log in files.boot_logs)})"
        )
    version = version or info.version
    image_name = cell.image_name(version)
    artifacts = []
    for fmt in cell.vendor.formats:
        path = files.artifact(fmt)
        artifacts.append(
            {
                "name": public_name(image_name, fmt),
                "format": fmt,
                "file": Format(fmt).artifact,
                "size": path.stat().st_size,
                "sha512": sha512_file(path),
            }
        )
    sboms = [
        {
            "name": public_name(image_name, sbom.PUBLIC_SUFFIX[kind]),
            "format": kind,
            "size": files.sbom(kind).stat().st_size,
            "sha512": sha512_file(files.sbom(kind)),
        }
        for kind in SBOM_FORMATS
    ]
    return Manifest(
        name=image_name,
        release={"codename": cell.release.name, "version": cell.release.version},
        vendor=cell.vendor.name,
        arch=cell.arch.name,
        version=version,
        build={
            "started": info.build_started,
            "seconds": info.build_seconds,
            "fai_classes": info.fai_classes,
            "disk_size": info.disk_size,
            "mirror": info.mirror,
            "builder": info.builder,
        },
        artifacts=artifacts,
        boot_test={
            "verdict": boot.verdict,
            "passed": boot.passed,
            "boots": [
                {k: b[k] for k in ("firmware", "verdict", "accelerator", "seconds", "milestones", "until")}
                for b in boot.boots
            ],
        },
        packages=read_packages(files.packages),
        # What the image is, measured in it at build time (tasks/stages/imagefacts.py).
        facts=read_facts(files.facts),
        sboms=sboms,
        reproducibility=reproducibility_summary(files),
        disk={"file": files.raw.name, "size": files.raw.stat().st_size, "sha512": sha512_sparse(files.raw)},
    )


def read_facts(path) -> dict:
    facts = read_document(path)
    if not isinstance(facts, dict):
        raise ManifestFailed(f"{path}: not an image facts report: build the cell again")
    return facts


def reproducibility_summary(files: CellFiles) -> dict | None:
    """The verdict of the cell's reproducibility report, when `doit reproduce` made one."""
    if not files.reproducibility.is_file():
        return None
    report = read_document(files.reproducibility)
    if not isinstance(report, dict):
        raise ManifestFailed(f"{files.reproducibility}: not a reproducibility report: doit reproduce:{files.cell.name}")
    return {
        "report": files.reproducibility.name,
        "sha512": sha512_file(files.reproducibility),
        **{key: report.get(key) for key in ("checked", "version", "trees", "disk")},
    }


def write(cell: Cell, files: CellFiles, version: str | None = None) -> None:
    atomic.write_json(files.manifest, describe(cell, files, version).to_json())
