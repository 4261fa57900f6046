"""Where each cell's files live in the work directory.

Names are fixed (no version or date in them) so that doit can know every
target before anything runs; the image's public name is given only when it
is published.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tasks.model.arch import Format
from tasks.model.matrix import XFAIL_PREFIX, Cell

# The SBOM formats every image gets (tasks/stages/sbom.py): SPDX 2.3 and CycloneDX, as JSON.
SBOM_FORMATS = ("spdx", "cdx")


@dataclass(frozen=True)
class CellFiles:
    cell: Cell
    dir: Path

    @classmethod
    def of(cls, workdir: Path, cell: Cell) -> CellFiles:
        return cls(cell, workdir / cell.name)

    # build
    @property
    def raw(self) -> Path:
        return self.dir / "disk.raw"

    @property
    def build_log(self) -> Path:
        return self.dir / "build.log"

    @property
    def packages(self) -> Path:
        return self.dir / "packages.tsv"

    @property
    def facts(self) -> Path:
        """The fidelity report, measured in the image (tasks/stages/imagefacts.py)."""
        return self.dir / "facts.json"

    @property
    def build_info(self) -> Path:
        return self.dir / "build-info.json"

    @property
    def dpkg_status(self) -> Path:
        """dpkg's status database of the image: what its SBOMs describe."""
        return self.dir / "dpkg-status"

    @property
    def apt_releases(self) -> Path:
        """The Release files apt used in the build: name, SHA-256, date (for the provenance)."""
        return self.dir / "apt-releases.tsv"

    @property
    def changelogs(self) -> Path:
        """The image's Debian changelogs, for the changes between versions."""
        return self.dir / "changelogs.tar"

    @property
    def build_records(self) -> list[Path]:
        """Everything a build writes besides the disk."""
        return [
            self.build_log,
            self.packages,
            self.facts,
            self.dpkg_status,
            self.apt_releases,
            self.changelogs,
            self.build_info,
        ]

    @property
    def staging(self) -> Path:
        """Scratch space of a running build; removed when it ends."""
        return self.dir / ".build"

    # compress
    def artifact(self, fmt: str) -> Path:
        return self.dir / Format(fmt).artifact

    @property
    def artifacts(self) -> list[Path]:
        return [self.artifact(fmt) for fmt in self.cell.vendor.formats]

    # SBOMs and provenance
    def sbom(self, kind: str) -> Path:
        return self.dir / f"sbom.{kind}.json"

    @property
    def sboms(self) -> list[Path]:
        return [self.sbom(kind) for kind in SBOM_FORMATS]

    @property
    def provenance(self) -> Path:
        """The in-toto statement (SLSA provenance) of the image, unsigned."""
        return self.dir / "provenance.json"

    @property
    def provenance_envelope(self) -> Path:
        """The statement in a DSSE envelope, signed when published with a key."""
        return self.dir / "provenance.intoto.json"

    # boot test
    def boot_log(self, firmware: str) -> Path:
        """The serial console of the boot through firmware (bios, uefi)."""
        return self.dir / f"boot-{firmware}.log"

    @property
    def boot_logs(self) -> list[Path]:
        return [self.boot_log(firmware) for firmware in self.cell.arch.firmware]

    @property
    def boot_result(self) -> Path:
        return self.dir / "boottest.json"

    # manifest and publish
    @property
    def manifest(self) -> Path:
        return self.dir / "manifest.json"

    @property
    def published(self) -> Path:
        """Receipt of the last publication: where, what, which checksums."""
        return self.dir / "published.json"

    def changes(self, fmt: str) -> Path:
        """What changed since the previous published version (json, txt)."""
        return self.dir / f"changes.{fmt}"

    @property
    def incus_metadata(self) -> Path:
        """The metadata tarball that makes the qcow2 an Incus or LXD VM image (tasks/stages/incus.py)."""
        return self.dir / "incus.tar.xz"

    @property
    def reproducibility(self) -> Path:
        """The report of `doit reproduce:<cell>`: a second build compared with the first."""
        return self.dir / "reproducibility.json"

    @property
    def rebuild(self) -> CellFiles:
        """Where `doit reproduce:<cell>` builds the cell a second time."""
        return CellFiles(self.cell, self.dir / "rebuild")

    @property
    def release_record(self) -> Path:
        """What the release step did: instance test, platform uploads, publication, notices."""
        return self.dir / "release.json"

    def xfail_record(self, stage: str) -> Path:
        """The outcome of xfail-<stage>:<cell>, a known-failing cell run up to stage."""
        return self.dir / f"{XFAIL_PREFIX}{stage}.json"

    def xfail_files(self, stage: str) -> CellFiles:
        """Where xfail-<stage>:<cell> runs its stages: a directory of its own, so
        that it declares every file it writes without sharing a target with the
        cell's own tasks (which still fail when named)."""
        return CellFiles(self.cell, self.dir / f"{XFAIL_PREFIX}{stage}")

    @property
    def release_progress(self) -> Path:
        """The steps of a release already done, so that a rerun resumes (tasks/release/step.py)."""
        return self.dir / "release-progress.json"

    @property
    def instance_test(self) -> Path:
        return self.dir / "instance-test.json"

    @property
    def instance_console(self) -> Path:
        return self.dir / "instance-test-console.log"

    @property
    def checksums(self) -> Path:
        """SHA512SUMS of the manifest and the image files, written by CI's keep job (tasks/release/handoff.py):
        kept when the files themselves expire, and what the release project checks what it fetched against."""
        return self.dir / "SHA512SUMS"

    @property
    def checksums_signature(self) -> Path:
        """SHA512SUMS.asc: the keep job's signature of SHA512SUMS (with the build project's key)."""
        return self.dir / "SHA512SUMS.asc"

    @property
    def records(self) -> list[Path]:
        """What a CI pipeline keeps for ever: logs, results and descriptions, not image data."""
        return [
            self.build_log,
            *self.boot_logs,
            self.boot_result,
            self.build_info,
            self.packages,
            self.facts,
            *self.sboms,
            self.provenance,
            self.manifest,
            self.checksums,
            self.checksums_signature,
        ]

    @property
    def release_records(self) -> list[Path]:
        return [self.release_record, self.release_progress, self.instance_test, self.instance_console]
