"""Where each cell's files live in the work directory.

Names are fixed (no version or date in them) so that doit can know every
target before anything runs; the image's public name is given only when it
is published.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tasks.model.matrix import FORMATS, Cell


@dataclass(frozen=True)
class CellFiles:
    cell: Cell
    dir: Path

    @classmethod
    def of(cls, workdir: Path, cell: Cell) -> "CellFiles":
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
        return self.dir / FORMATS[fmt]

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
