"""Known-failing cells: their failure is reported as expected and does not fail the run.

A cell whose disk is too small for its layout fails in seconds, at the
partitioning step of a real FAI build.
"""

import json
import os
from pathlib import Path

import pytest
import yaml

from .conftest import run_doit

REPO = Path(__file__).resolve().parent.parent
# The unit tests' own matrix (tests/data/matrix.yaml), not the project's.
FIXTURE_MATRIX = REPO / "tests" / "data" / "matrix.yaml"
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="image builds need root")


@pytest.fixture
def setup(tmp_path):
    data = yaml.safe_load((FIXTURE_MATRIX).read_text())
    data["vendors"]["tiny"] = {"fai_classes": ["NOCLOUD", "LINUX_GENERIC"], "disk_size": "64M", "formats": ["tar.xz"]}
    data["tiers"]["push"] = [{"releases": ["bookworm"], "vendors": ["tiny"], "architectures": ["amd64"]}]
    data["known_failures"] = [{"cells": "*-tiny-*", "reason": "64 MiB cannot hold the root file system"}]
    matrix = tmp_path / "matrix.yaml"
    matrix.write_text(yaml.safe_dump(data, sort_keys=False))
    workdir = tmp_path / "build"
    # The build fails before it would unpack the base; doit only needs the file.
    (workdir / "base").mkdir(parents=True)
    (workdir / "base" / "bookworm-amd64.tar.zst").write_bytes(b"not read")
    return matrix, workdir


def doit(matrix, workdir, *args):
    return run_doit("--single", *args, f"matrix={matrix}", f"workdir={workdir}", timeout=600)


def test_expected_failure_does_not_fail_the_run(setup):
    matrix, workdir = setup
    result = doit(matrix, workdir, "xfail-build:bookworm-tiny-amd64")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "EXPECTED FAILURE bookworm-tiny-amd64 at build (64 MiB cannot hold the root file system)" in result.stdout
    record = json.loads((workdir / "bookworm-tiny-amd64" / "xfail-build.json").read_text())
    assert record["outcome"] == "failed as expected" and record["failed_stage"] == "build"
    assert "FAI failed" in record["message"]
    # Nothing changed: the known failure is not run again.
    again = doit(matrix, workdir, "xfail-build:bookworm-tiny-amd64")
    assert "-- xfail-build:bookworm-tiny-amd64" in again.stdout, again.stdout + again.stderr


def test_naming_the_cell_itself_still_fails(setup):
    matrix, workdir = setup
    result = doit(matrix, workdir, "build:bookworm-tiny-amd64")
    assert result.returncode != 0
    assert "FAI failed" in result.stdout + result.stderr
