"""Compression with the real tar, xz and qemu-img, on a small sparse disk."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from tasks.stages import compress


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


def extract(archive, tmp_path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["tar", "--extract", "--sparse", "--file", str(archive), "--directory", str(out)], check=True)
    return out


def test_sparse_tar_xz_round_trip(sparse_disk, tmp_path):
    output = tmp_path / "image.tar.xz"
    compress.sparse_tar(sparse_disk, output, compress.xz(1), label="test", fixed=2)
    assert output.stat().st_size < 4 << 20
    listing = subprocess.run(
        ["tar", "--list", "--verbose", "--file", str(output)], capture_output=True, text=True, check=True
    ).stdout
    assert listing.split()[-1] == "disk.raw"
    extracted = extract(output, tmp_path) / "disk.raw"
    assert extracted.read_bytes() == sparse_disk.read_bytes()
    assert compress.allocated_bytes(extracted) < 8 << 20, "holes survive the round trip"


def test_gce_tar_gz_is_oldgnu_with_disk_raw(sparse_disk, tmp_path):
    output = tmp_path / "image.tar.gz"
    compress.sparse_tar(sparse_disk, output, compress.gzip(), label="test", fixed=2, tar_format="oldgnu")
    assert subprocess.run(["gzip", "--test", str(output)]).returncode == 0
    header = subprocess.run(["gzip", "-dc", str(output)], capture_output=True, check=True).stdout[:512]
    assert header[:8] == b"disk.raw"
    assert header[257:265] == b"ustar  \0", "GNU (oldgnu) magic, as GCE's import wants"
    assert (extract(output, tmp_path) / "disk.raw").read_bytes() == sparse_disk.read_bytes()


def test_azure_vhd_is_fixed_with_the_raw_size(sparse_disk, tmp_path):
    output = tmp_path / "image.vhd.tar.xz"
    compress.vhd_tar_xz(sparse_disk, output, compress.xz(1), label="test", fixed=2)
    vhd = extract(output, tmp_path) / "disk.vhd"
    assert vhd.stat().st_size == sparse_disk.stat().st_size + 512
    assert vhd.read_bytes()[-512:][:8] == b"conectix", "VHD footer cookie"
    assert vhd.read_bytes()[-512:][60:64] == (2).to_bytes(4, "big"), "disk type 2: fixed"
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", "-f", "vpc", str(vhd)], capture_output=True, text=True, check=True
        ).stdout
    )
    assert info["virtual-size"] == sparse_disk.stat().st_size
    subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "vpc", str(sparse_disk), str(vhd)], check=True)


def test_azure_refuses_a_size_that_is_not_whole_mib(tmp_path):
    raw = tmp_path / "disk.raw"
    raw.write_bytes(b"x" * 5000)
    with pytest.raises(compress.CompressFailed, match="whole number of MiB"):
        compress.vhd_tar_xz(raw, tmp_path / "out.vhd.tar.xz", compress.xz(1), label="test")


def test_segments_make_one_valid_stream_of_streams(sparse_disk, tmp_path):
    """Small segments, CPU slots: several xz streams that read back as one tar."""
    output = tmp_path / "image.tar.xz"
    squeezer = compress.Squeezer(compress.xz(1).command, segment=1 << 20)
    compress.sparse_tar(sparse_disk, output, squeezer, label="test", cpu_slots=tmp_path / "cpu")
    listing = subprocess.run(
        ["xz", "--robot", "--list", str(output)], capture_output=True, text=True, check=True
    ).stdout
    streams = int(next(line for line in listing.splitlines() if line.startswith("totals")).split()[1])
    assert streams >= 3
    assert (extract(output, tmp_path) / "disk.raw").read_bytes() == sparse_disk.read_bytes()


def test_qcow2_matches_raw(sparse_disk, tmp_path):
    output = tmp_path / "image.qcow2"
    compress.qcow2(sparse_disk, output, threads=2, label="test")
    info = subprocess.run(
        ["qemu-img", "info", "--output=json", str(output)], capture_output=True, text=True, check=True
    ).stdout
    assert '"format": "qcow2"' in info
    subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(sparse_disk), str(output)], check=True)


def test_compress_writes_only_complete_artifacts(test_matrix, tmp_path, sparse_disk):
    from tasks.model.layout import CellFiles
    from tasks.model.matrix import CompressSettings

    cell = test_matrix.cell("bookworm-nocloud-amd64")
    files = CellFiles.of(tmp_path / "build", cell)
    files.dir.mkdir(parents=True)
    os.link(sparse_disk, files.raw)
    compress.compress(cell, files, CompressSettings(xz_level=1, xz_threads=0), tmp_path / "cpu")
    assert sorted(p.name for p in files.dir.iterdir()) == ["disk.raw", "image.qcow2", "image.tar.xz"]


def test_failed_compression_leaves_no_artifact(test_matrix, tmp_path):
    from tasks.model.layout import CellFiles
    from tasks.model.matrix import CompressSettings

    cell = test_matrix.cell("bookworm-nocloud-amd64")
    files = CellFiles.of(tmp_path / "build", cell)
    files.dir.mkdir(parents=True)
    files.raw.mkdir()  # tar of a directory named disk.raw succeeds; qemu-img of it fails
    with pytest.raises(compress.CompressFailed):
        compress.compress(cell, files, CompressSettings(xz_level=1, xz_threads=1), tmp_path / "cpu")
    leftovers = sorted(p.name for p in files.dir.iterdir())
    assert "image.qcow2" not in leftovers and not [n for n in leftovers if "partial" in n]
