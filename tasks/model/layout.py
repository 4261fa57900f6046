"""Where each cell's files live in the work directory.

Names are fixed (no version or date in them) so that doit can know every
target before anything runs; the image's public name is given only when it
is published.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tasks.model.arch import Format
from tasks.model.matrix import Cell


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
    def staging(self) -> Path:
        """Scratch space of a running build; removed when it ends."""
        return self.dir / ".build"

    # compress
    def artifact(self, fmt: str) -> Path:
        return self.dir / Format(fmt).artifact

    @property
    def artifacts(self) -> list[Path]:
        return [self.artifact(fmt) for fmt in self.cell.vendor.formats]

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

    @property
    def release_record(self) -> Path:
        """What the release step did: instance test, platform uploads, publication, notices."""
        return self.dir / "release.json"

    def xfail_record(self, stage: str) -> Path:
        """The outcome of xfail-<stage>:<cell>, a known-failing cell run up to stage."""
        return self.dir / f"xfail-{stage}.json"

    def xfail_files(self, stage: str) -> CellFiles:
        """Where xfail-<stage>:<cell> runs its stages: a directory of its own, so
        that it declares every file it writes without sharing a target with the
        cell's own tasks (which still fail when named)."""
        return CellFiles(self.cell, self.dir / f"xfail-{stage}")

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
        """SHA512SUMS of the image files, kept by CI when the files themselves expire."""
        return self.dir / "SHA512SUMS"

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
            self.manifest,
            self.checksums,
        ]

    @property
    def release_records(self) -> list[Path]:
        return [self.release_record, self.release_progress, self.instance_test, self.instance_console]
