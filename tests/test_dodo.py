"""The doit command line: listing tasks, and refusing a bad matrix before any task."""

import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def doit(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "doit", "-f", str(REPO / "dodo.py"), *args],
                          capture_output=True, text=True, cwd=cwd, timeout=60)


def test_list_shows_every_stage_of_every_cell(tmp_path, repo_matrix):
    result = doit("list", "--all", "--quiet", f"workdir={tmp_path}")
    assert result.returncode == 0, result.stderr
    names = set(result.stdout.split())
    for cell in repo_matrix.cells:
        for stage in ("build", "compress", "boottest", "manifest", "publish"):
            assert f"{stage}:{cell.name}" in names
    assert {"build", "compress", "boottest", "manifest", "publish"} <= names


def test_bad_matrix_gives_one_line_and_no_tasks(tmp_path):
    data = yaml.safe_load((REPO / "matrix.yaml").read_text())
    data["vendors"]["genericcloud"]["disk_size"] = "two gigs"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data, sort_keys=False))
    result = doit("list", f"matrix={bad}", f"workdir={tmp_path / 'w'}")
    assert result.returncode != 0
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"error: {bad}: vendors.genericcloud.disk_size: expected a size such as 2G or 512M, got 'two gigs'"]


def test_bad_option_gives_one_line(tmp_path):
    result = doit("list", "tier=nightly", f"workdir={tmp_path}")
    assert result.returncode != 0 and result.stdout == ""
    assert result.stderr.strip().endswith("tiers: no tier named 'nightly' (expected one of: push, full)")


def test_misspelt_option_is_refused(tmp_path):
    result = doit("list", f"worddir={tmp_path}")
    assert result.returncode != 0 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "error: command line: worddir: unknown option (expected one of: matrix, tier, workdir, storage, version, "
        "xz_level, source, cells, confirm)"]


def test_state_database_is_sqlite(tmp_path):
    result = doit("forget", "build:bookworm-nocloud-amd64", f"workdir={tmp_path}")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / ".doit.db").read_bytes()[:16] == b"SQLite format 3\x00"
