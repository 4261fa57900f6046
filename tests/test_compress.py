"""Compression with the real tar, xz and qemu-img, on small and large sparse disks."""

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tasks.stages import compress
from tasks.system.checksum import _data_segments

MIB = 1 << 20


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


def content_digest(path: Path) -> str:
    """SHA-256 of a file's content and size, holes and zero blocks alike counting as zeros."""
    digest = hashlib.sha256()
    size = path.stat().st_size
    digest.update(size.to_bytes(8, "little"))
    with open(path, "rb") as f:
        for start, length in _data_segments(f.fileno(), size):
            f.seek(start)
            for offset in range(start, start + length, 64 << 10):
                block = f.read(min(64 << 10, start + length - offset))
                if block.count(0) != len(block):
                    digest.update(offset.to_bytes(8, "little") + block)
    return digest.hexdigest()


@pytest.mark.parametrize(
    "stream, workers, smallest, expected",
    [
        (600, 2, 192, (2, 300)),  # a cloud-kernel image: one segment per core, not three and a sliver
        (1000, 2, 192, (2, 500)),  # nocloud
        (5000, 3, 192, (3, 1667)),
        (300, 2, 192, (1, 300)),  # too little for two segments of xz's size: one
        (500, 4, 192, (2, 250)),  # two segments of xz's size, not four smaller ones
        (10, 2, 192, (1, 10)),
        (0, 2, 192, (1, 1)),
    ],
)
def test_first_cut_is_one_equal_segment_per_core(stream, workers, smallest, expected):
    got = compress.cut(stream, workers, compress.Squeezer(("xz",), smallest=smallest))
    assert (got.count, got.size) == expected
    assert got.size * (got.count - 1) < max(stream, 1) <= got.size * got.count


def test_xz_segments_are_three_dictionaries_at_first():
    assert (compress.xz(9).smallest, compress.xz(9).piece) == (192 * MIB, compress.MIN_PIECE)
    assert (compress.xz(1).smallest, compress.xz(1).piece) == (compress.MIN_SEGMENT, compress.MIN_PIECE)


def test_a_fresh_start_loses_xzs_dictionary_and_gzips_window_is_too_small_to_count():
    assert compress.xz(9).history == 64 * MIB
    assert "--long=26" in compress.fresh_start_estimator(compress.xz(9).history).command
    assert compress.xz(0).history == 256 << 10
    assert compress.gzip().history == 0


def spooled(data: bytes, tmp_path) -> compress._Segments:
    """The segments of a stream already spooled, cut in two for xz -9."""
    import io

    spool = compress._Spool(tmp_path)
    spool.fill(io.BytesIO(data))
    return compress._Segments(spool, compress.cut(len(data), 2, compress.xz(9)), compress.xz(9), progress=None)


def test_a_fresh_start_costs_what_the_piece_finds_in_the_history_before_it(tmp_path):
    """Random data loses nothing by starting afresh; a piece repeating what precedes it loses almost all of it."""
    head, tail = os.urandom(8 * MIB), os.urandom(8 * MIB)
    with compress.Workers(1) as workers:
        fresh = spooled(head + tail, tmp_path)._fresh_start_cost(workers, 8 * MIB, 8 * MIB)
        repeated = spooled(head + head, tmp_path)._fresh_start_cost(workers, 8 * MIB, 8 * MIB)
    assert fresh < compress.SPLIT_BUDGET / 10
    # zstd finds the repeat: the piece costs about its own size again, half the stream's output.
    assert 0.3 < repeated


def write_runs(path: Path, size: int, runs: list[tuple[int, int]], same: bool = False) -> None:
    """A sparse file of size bytes holding data at each (offset, length): random 4 KiB blocks, each
    repeated 16 times, so xz has something to find and a little work (the test's time goes to its
    own slow compressors); same: every run holds the same data."""

    def run(length: int) -> bytes:
        return b"".join(os.urandom(4096) * 16 for _ in range(length // (64 << 10)))

    block = run(runs[0][1]) if same else b""
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, length in runs:
            f.seek(offset)
            f.write(block or run(length))


# A compressor that takes its input slowly where it holds the tar header (the
# first segment) or everywhere: equal bytes need not take equal time.
SLOW = (
    sys.executable,
    "-c",
    "import subprocess, sys, time\n"
    "xz = subprocess.Popen(['xz', '-0', '-T1', '-c'], stdin=subprocess.PIPE)\n"
    "first = True\n"
    "while chunk := sys.stdin.buffer.read(256 << 10):\n"
    "    if first: slow = sys.argv[1] == 'all' or chunk[:8] == b'disk.raw'; first = False\n"
    "    time.sleep(0.02 if slow else 0)\n"
    "    xz.stdin.write(chunk)\n"
    "xz.stdin.close()\n"
    "sys.exit(xz.wait())\n",
)


def squeeze(raw: Path, output: Path, squeezer, workers: int, slots: Path | None) -> list[int]:
    with compress.Workers(workers, slots) as pool:
        compress.sparse_tar(raw, output, squeezer, "test", pool)
    sizes = compress.xz_stream_sizes(output)
    assert sum(sizes) == len(subprocess.run(["xz", "-dc", str(output)], capture_output=True, check=True).stdout)
    return sizes


@pytest.mark.parametrize(
    "case, workers, data_mib, command, smallest, piece",
    [
        ("one segment: less data than one needs, too little to split", 2, 1, compress.xz(0).command, 2, 64),
        ("one segment per core, none split", 2, 6, compress.xz(0).command, 2, 64),
        ("one per core, three cores", 3, 6, compress.xz(0).command, 2, 64),
        ("fewer segments than cores rather than segments below the smallest", 4, 5, compress.xz(0).command, 2, 64),
        ("the slow first segment split by the idle core, again and again", 2, 24, (*SLOW, "first"), 2, 1),
        ("one segment split among three cores", 3, 24, (*SLOW, "all"), 64, 1),
    ],
)
def test_every_segment_layout_decompresses_to_the_same_disk(
    tmp_path, monkeypatch, case, workers, data_mib, command, smallest, piece
):
    monkeypatch.setattr(compress.cpu, "cores", lambda: workers)  # a slot per worker, whatever this machine has
    raw = tmp_path / "src" / "disk.raw"
    raw.parent.mkdir()
    write_runs(raw, 128 * MIB, [(i * 4 * MIB, MIB) for i in range(data_mib)])
    # Every split is estimated first (4 MiB of history): random runs lose nothing by starting afresh.
    squeezer = compress.Squeezer(command, smallest=smallest * MIB, piece=piece * MIB, history=4 * MIB)
    first = compress.cut(compress.allocated_bytes(raw), workers, squeezer)
    sizes = squeeze(raw, tmp_path / "image.tar.xz", squeezer, workers, tmp_path / "cpu")
    if piece == 64:  # nothing to split: the first cut is the layout
        assert len(sizes) == first.count
        assert sizes[:-1] == [first.size] * (first.count - 1)
    else:
        assert len(sizes) > first.count, "the idle cores took pieces"
        assert min(sizes[:-1]) >= squeezer.piece
    assert content_digest(extract(tmp_path / "image.tar.xz", tmp_path) / "disk.raw") == content_digest(raw)


@pytest.mark.parametrize("history, split", [(0, True), (4 * MIB, False)])
def test_a_split_that_would_lose_the_history_is_not_made(tmp_path, monkeypatch, history, split):
    """Every run holds the same MiB: a piece would compress afresh what its history holds, so with that
    history counted the idle core leaves the slow segment's tail alone (without it, it splits)."""
    monkeypatch.setattr(compress.cpu, "cores", lambda: 2)
    raw = tmp_path / "src" / "disk.raw"
    raw.parent.mkdir()
    write_runs(raw, 128 * MIB, [(i * 4 * MIB, MIB) for i in range(24)], same=True)
    squeezer = compress.Squeezer((*SLOW, "first"), smallest=2 * MIB, piece=MIB, history=history)
    sizes = squeeze(raw, tmp_path / "image.tar.xz", squeezer, 2, tmp_path / "cpu")
    assert (len(sizes) > 2) == split, sizes
    assert content_digest(extract(tmp_path / "image.tar.xz", tmp_path) / "disk.raw") == content_digest(raw)


def test_a_core_freed_late_joins_by_splitting(tmp_path, monkeypatch):
    """One slot held elsewhere (a boot test) at first: when it frees, a second compressor takes half the rest."""
    import fcntl

    monkeypatch.setattr(compress.cpu, "cores", lambda: 2)

    raw = tmp_path / "src" / "disk.raw"
    raw.parent.mkdir()
    write_runs(raw, 128 * MIB, [(i * 4 * MIB, MIB) for i in range(24)])
    slots = tmp_path / "cpu"
    slots.mkdir()
    held = open(slots / "slot-1", "w")
    fcntl.flock(held, fcntl.LOCK_EX)
    threading.Timer(1.5, held.close).start()  # closing releases the lock
    squeezer = compress.Squeezer((*SLOW, "all"), smallest=64 * MIB, piece=MIB)
    sizes = squeeze(raw, tmp_path / "image.tar.xz", squeezer, 2, slots)
    assert len(sizes) >= 2
    assert content_digest(extract(tmp_path / "image.tar.xz", tmp_path) / "disk.raw") == content_digest(raw)


def test_an_8_gib_sparse_disk_decompresses_to_the_same_disk(tmp_path):
    """Data on both sides of 4 GiB and at the very end, cut in two."""
    raw = tmp_path / "src" / "disk.raw"
    raw.parent.mkdir()
    size = 8 << 30
    write_runs(raw, size, [(0, 2 * MIB), ((4 << 30) - MIB, 2 * MIB), (size - 3 * MIB, 3 * MIB)])
    squeezer = compress.Squeezer(compress.xz(0).command, smallest=MIB, piece=64 * MIB)
    sizes = squeeze(raw, tmp_path / "image.tar.xz", squeezer, 2, tmp_path / "cpu")
    assert len(sizes) == compress.cut(compress.allocated_bytes(raw), 2, squeezer).count == 2
    extracted = extract(tmp_path / "image.tar.xz", tmp_path) / "disk.raw"
    assert extracted.stat().st_size == size
    assert compress.allocated_bytes(extracted) < 64 * MIB, "holes survive the round trip"
    assert content_digest(extracted) == content_digest(raw)


def test_sparse_tar_xz_round_trip(sparse_disk, tmp_path):
    output = tmp_path / "image.tar.xz"
    with compress.Workers(2) as workers:
        compress.sparse_tar(sparse_disk, output, compress.xz(1), "test", workers)
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
    with compress.Workers(2) as workers:
        compress.sparse_tar(sparse_disk, output, compress.gzip(), "test", workers, tar_format="oldgnu")
    assert subprocess.run(["gzip", "--test", str(output)]).returncode == 0
    header = subprocess.run(["gzip", "-dc", str(output)], capture_output=True, check=True).stdout[:512]
    assert header[:8] == b"disk.raw"
    assert header[257:265] == b"ustar  \0", "GNU (oldgnu) magic, as GCE's import wants"
    assert (extract(output, tmp_path) / "disk.raw").read_bytes() == sparse_disk.read_bytes()


def test_azure_vhd_is_fixed_with_the_raw_size(sparse_disk, tmp_path):
    output = tmp_path / "image.vhd.tar.xz"
    with compress.Workers(2) as workers:
        compress.vhd_tar_xz(sparse_disk, output, compress.xz(1), "test", workers)
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
        compress.vhd_tar_xz(raw, tmp_path / "out.vhd.tar.xz", compress.xz(1), "test", compress.Workers(1))


class RecordingWorkers(compress.Workers):
    """Workers that note when each process they run starts and ends."""

    def __init__(self, *args):
        super().__init__(*args)
        self.events: list[tuple[float, str, str]] = []

    def start(self, command, **popen_args):
        child = super().start(command, **popen_args)
        self.events.append((time.monotonic(), "start", command[0]))
        return child

    def finish(self, child):
        super().finish(child)
        self.events.append((time.monotonic(), "end", child.args[0]))


def test_qcow2_fills_the_xz_tail(test_matrix, tmp_path, sparse_disk, monkeypatch):
    """tar.xz and qcow2: qemu-img starts on the core the quicker segment left, before the slower one ends."""
    from tasks.model.layout import CellFiles
    from tasks.model.matrix import CompressSettings

    cell = test_matrix.cell("bookworm-nocloud-amd64")
    files = CellFiles.of(tmp_path / "build", cell)
    files.dir.mkdir(parents=True)
    os.link(sparse_disk, files.raw)
    # Nothing split: the slow first segment leaves a tail.
    monkeypatch.setattr(compress, "xz", lambda level: compress.Squeezer((*SLOW, "first"), smallest=MIB, piece=64 * MIB))
    recorder: list[RecordingWorkers] = []

    def recording(*args):
        recorder.append(RecordingWorkers(*args))
        return recorder[-1]

    monkeypatch.setattr(compress, "Workers", recording)
    monkeypatch.setattr(compress.cpu, "cores", lambda: 2)
    compress.compress(cell, files, CompressSettings(xz_level=0, xz_threads=0), tmp_path / "cpu")
    events = recorder[0].events
    qemu_start = next(t for t, what, cmd in events if (what, cmd) == ("start", "qemu-img"))
    segment_ends = [t for t, what, cmd in events if (what, cmd) == ("end", sys.executable)]
    assert len(segment_ends) == 2
    assert min(segment_ends) <= qemu_start < max(segment_ends)
    assert (extract(files.artifact("tar.xz"), tmp_path) / "disk.raw").read_bytes() == sparse_disk.read_bytes()
    subprocess.run(
        ["qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(sparse_disk), str(files.artifact("qcow2"))], check=True
    )


def test_qcow2_matches_raw(sparse_disk, tmp_path):
    output = tmp_path / "image.qcow2"
    with compress.Workers(2, tmp_path / "cpu") as workers:
        compress.qcow2(sparse_disk, output, "test", workers)
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


def _anon_huge_kib(pid: int) -> int:
    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    found = re.search(r"^AnonHugePages:\s+(\d+) kB", rollup, re.M)
    assert found, rollup
    return int(found.group(1))


def test_xz_adds_huge_pages_to_the_callers_glibc_tunables(monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.check=0")
    environment = compress.xz(9).environment()
    assert environment and environment["GLIBC_TUNABLES"] == f"glibc.malloc.check=0:{compress.HUGE_PAGES}"
    monkeypatch.delenv("GLIBC_TUNABLES")
    environment = compress.xz(9).environment()
    assert environment and environment["GLIBC_TUNABLES"] == compress.HUGE_PAGES
    assert compress.gzip().environment() is None  # gzip's few KiB gain nothing: this process's environment


@pytest.mark.skipif(
    "[madvise]" not in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text(),
    reason="huge pages only where memory asks for them (Debian's default) tell the tunable's effect",
)
def test_xz_keeps_its_match_finder_on_huge_pages():
    chunks = [os.urandom(MIB), os.urandom(MIB)]
    huge_kib: list[int] = []
    with compress.Workers(1) as pool:

        def feed() -> bytes | None:
            if chunks:
                return chunks.pop()
            # Both chunks written: xz has set up its match finder and waits for more.
            (child,) = pool.running
            deadline = time.monotonic() + 10
            while not huge_kib or (huge_kib[-1] == 0 and time.monotonic() < deadline):
                huge_kib.append(_anon_huge_kib(child.pid))
                time.sleep(0.1)
            return None

        compressed = pool.squeeze(compress.xz(9), feed)

    assert compressed.startswith(b"\xfd7zXZ\x00")
    assert huge_kib[-1] > 0, "without the tunable, xz gets no transparent huge pages here"
