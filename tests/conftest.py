"""Shared fixtures: the repository's matrix, and a cell's work files made small."""

import json
import os
from pathlib import Path

import pytest

from tasks.model import matrix
from tasks.model.layout import CellFiles
from tasks.stages import manifest

REPO = Path(__file__).resolve().parent.parent


# The unit tests' own matrix, kept apart from the project's matrix.yaml so that
# editing the project's matrix never changes what a unit test means.
FIXTURE_MATRIX = REPO / "tests" / "data" / "matrix.yaml"


@pytest.fixture(scope="session")
def repo_matrix():
    """The project's own matrix.yaml: what the end-to-end tests build."""
    return matrix.load(REPO / "matrix.yaml")


@pytest.fixture(scope="session")
def test_matrix_file() -> Path:
    return FIXTURE_MATRIX


@pytest.fixture(scope="session")
def test_matrix(test_matrix_file):
    """The unit tests' matrix."""
    return matrix.load(test_matrix_file)


def fake_outputs(workdir: Path, cell, version: str = "20261125-1200") -> CellFiles:
    """What build, compress and boot test leave for a cell, as small real files."""
    files = CellFiles.of(workdir, cell)
    files.dir.mkdir(parents=True)
    for fmt in cell.vendor.formats:
        files.artifact(fmt).write_bytes(os.urandom(3000) + fmt.encode())
    files.packages.write_text("base-files\t12.4+deb12u8\tamd64\nbash\t5.2.15-2+b7\tamd64\n")
    files.facts.write_text(
        json.dumps({"schema": "image-facts/1", "packages": ["base-files", "bash"], "users": {"default_user": "debian"}})
    )
    files.build_info.write_text(
        json.dumps(
            {
                "cell": cell.name,
                "release": cell.release.name,
                "release_version": cell.release.version,
                "vendor": cell.vendor.name,
                "arch": cell.arch.name,
                "version": version,
                "image_name": cell.image_name(version),
                "fai_classes": list(cell.fai_classes),
                "disk_size": cell.vendor.disk_size,
                "build_started": "2026-11-25T12:00:00+00:00",
                "build_seconds": 90.0,
                "builder": {"fai": "6.0.3+deb12u1", "host_kernel": "6.1.0"},
                "mirror": "http://deb.debian.org/debian",
            }
        )
    )
    files.boot_result.write_text(
        json.dumps(
            {
                "cell": cell.name,
                "verdict": "passed",
                "passed": True,
                "boots": [
                    {
                        "firmware": firmware,
                        "verdict": "passed",
                        "accelerator": "tcg",
                        "seconds": 34.0,
                        "milestones": {"kernel": 9.0, "systemd": 17.0, "login": 34.0},
                        "until": "login",
                    }
                    for firmware in cell.arch.firmware
                ],
            }
        )
    )
    return files


@pytest.fixture
def nocloud(repo_matrix, tmp_path):
    """bookworm-nocloud-amd64's outputs, small and real, with their manifest."""
    cell = repo_matrix.cell("bookworm-nocloud-amd64")
    files = fake_outputs(tmp_path / "build", cell)
    manifest.write(cell, files)
    return cell, files
