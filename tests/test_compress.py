"""Compression with the real tar, xz and qemu-img, on a small sparse disk."""

import os
import subprocess

import pytest

from tasks import compress


@pytest.fixture
def sparse_disk(tmp_path):
    """A 64 MiB raw disk holding three 1 MiB runs of data and holes elsewhere."""
    raw = tmp_path / "src" / "disk.raw"
    raw.parent.mkdir()
    with open(raw, "wb") as f:
        f.truncate(64 << 20)
        for offset in (0, 20 << 20, 63 << 20):
            f.seek(offset)
            f.write(os.urandom(1 << 20))
    assert compress.allocated_bytes(raw) < 8 << 20, "the test needs a file system with holes"
    return raw


def test_sparse_tar_xz_round_trip(sparse_disk, tmp_path):
    output = tmp_path / "image.tar.xz"
    compress.sparse_tar_xz(sparse_disk, output, level=1, threads=2, label="test")
    assert output.stat().st_size < 4 << 20
    listing = subprocess.run(["tar", "--list", "--verbose", "--file", str(output)],
                             capture_output=True, text=True, check=True).stdout
    assert listing.split()[-1] == "disk.raw"
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["tar", "--extract", "--sparse", "--file", str(output), "--directory", str(out)], check=True)
    extracted = out / "disk.raw"
    assert extracted.read_bytes() == sparse_disk.read_bytes()
    assert compress.allocated_bytes(extracted) < 8 << 20, "holes survive the round trip"


def test_qcow2_matches_raw(sparse_disk, tmp_path):
    output = tmp_path / "image.qcow2"
    compress.qcow2(sparse_disk, output, label="test")
    info = subprocess.run(["qemu-img", "info", "--output=json", str(output)], capture_output=True, text=True,
                          check=True).stdout
    assert '"format": "qcow2"' in info
    subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(sparse_disk), str(output)], check=True)


def test_compress_writes_only_complete_artifacts(repo_matrix, tmp_path, sparse_disk):
    from tasks.layout import CellFiles
    from tasks.matrix import CompressSettings

    cell = repo_matrix.cell("bookworm-nocloud-amd64")
    files = CellFiles.of(tmp_path / "build", cell)
    files.dir.mkdir(parents=True)
    os.link(sparse_disk, files.raw)
    compress.compress(cell, files, CompressSettings(xz_level=1, xz_threads=2))
    assert sorted(p.name for p in files.dir.iterdir()) == ["disk.raw", "image.qcow2", "image.tar.xz"]


def test_failed_compression_leaves_no_artifact(repo_matrix, tmp_path):
    from tasks.layout import CellFiles
    from tasks.matrix import CompressSettings

    cell = repo_matrix.cell("bookworm-nocloud-amd64")
    files = CellFiles.of(tmp_path / "build", cell)
    files.dir.mkdir(parents=True)
    files.raw.mkdir()  # tar of a directory named disk.raw succeeds; qemu-img of it fails
    with pytest.raises(compress.CompressFailed):
        compress.compress(cell, files, CompressSettings(xz_level=1, xz_threads=1))
    leftovers = sorted(p.name for p in files.dir.iterdir())
    assert "image.qcow2" not in leftovers and not [n for n in leftovers if "partial" in n]
