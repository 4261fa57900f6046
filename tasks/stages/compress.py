"""The compress stage: each format a vendor asks for, from disk.raw.

    tar.xz      disk.raw in a sparse GNU tar, xz (most vendors)
    qcow2       compressed qcow2 (qemu-img convert -c)
    vhd.tar.xz  disk.raw as a fixed-size VHD (Azure), disk.vhd in a sparse tar, xz
    tar.gz      disk.raw in an oldgnu sparse tar, gzip (what GCE's image import reads)

GNU tar --sparse stores only the blocks the image uses (FAI's last step
discarded the free ones), so reading a 2 GiB disk holding 700 MB costs
seconds; compression is where the time goes. The tar stream is cut into
segments, each compressed by its own single-threaded xz (or gzip) holding
one CPU slot (tasks/system/cpu.py), and the compressed streams are written one
after the other: xz and gzip both read concatenated streams as one, and
this is how xz's own threads split their work too (independent blocks of
three dictionaries). Segments start as slots free up, so a compression
that begins while boot tests occupy the cores takes them over as those
tests end, and never runs more processes than there are free cores.
"""

from __future__ import annotations

import collections
import io
import re
import subprocess
import tempfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tasks.errors import StageFailed
from tasks.model.layout import CellFiles
from tasks.model.matrix import Cell, CompressSettings
from tasks.progress import StageProgress
from tasks.system import atomic, cpu, proc

MIB = 1 << 20
# xz's dictionary size per preset (xz(1)); a segment is three of them, as
# xz's own --block-size default for threaded compression.
XZ_DICTIONARY_MIB = {0: 0.25, 1: 1, 2: 2, 3: 4, 4: 4, 5: 8, 6: 8, 7: 16, 8: 32, 9: 64}
MIN_SEGMENT = 32 * MIB
_QEMU_IMG_PERCENT = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


class CompressFailed(StageFailed):
    pass


@dataclass(frozen=True)
class Squeezer:
    """A compressor whose outputs concatenate: one single-threaded process per segment."""

    command: tuple[str, ...]  # reads stdin, writes stdout
    segment: int  # bytes of input per process


def xz(level: int) -> Squeezer:
    segment = max(int(3 * XZ_DICTIONARY_MIB[level] * MIB), MIN_SEGMENT)
    return Squeezer(("xz", f"-{level}", "--threads=1", "--stdout", "-"), segment)


def gzip() -> Squeezer:
    return Squeezer(("gzip", "-6", "--no-name", "--stdout"), MIN_SEGMENT)


def compress_config(cell: Cell, settings: CompressSettings) -> dict:
    return {"formats": list(cell.vendor.formats), "xz_level": settings.xz_level}


def compress(cell: Cell, files: CellFiles, settings: CompressSettings, cpu_slots: Path) -> None:
    # xz_threads 0: as many segments at once as there are free CPU slots.
    fixed = settings.xz_threads or None
    for fmt in cell.vendor.formats:
        with atomic.output(files.artifact(fmt), keep_suffix=True) as partial:
            label = f"{fmt} {cell.name}"
            if fmt == "tar.xz":
                sparse_tar(files.raw, partial, xz(settings.xz_level), label, cpu_slots, fixed)
            elif fmt == "qcow2":
                with cpu.slots(cpu_slots, want=fixed or cpu.cores()) as got:
                    qcow2(files.raw, partial, fixed or got, label)
            elif fmt == "vhd.tar.xz":
                vhd_tar_xz(files.raw, partial, xz(settings.xz_level), label, cpu_slots, fixed)
            elif fmt == "tar.gz":
                sparse_tar(files.raw, partial, gzip(), label, cpu_slots, fixed, tar_format="oldgnu")
            else:  # matrix.py admits only the formats above
                raise CompressFailed(f"{cell.name}: no compressor for format {fmt!r}")


def allocated_bytes(path: Path) -> int:
    return path.stat().st_blocks * 512


class _Segments:
    """Compresses segments in worker threads, each in a process of its own."""

    def __init__(self, squeezer: Squeezer, cpu_slots: Path | None, fixed: int | None):
        self.squeezer = squeezer
        self.cpu_slots = cpu_slots
        self.workers = fixed or cpu.cores()
        self.fixed = fixed
        self.running: set[subprocess.Popen] = set()
        self.lock = threading.Lock()
        self.stopping = False

    def compress(self, data: bytes) -> bytes:
        if self.fixed or self.cpu_slots is None:
            return self._run(data)
        with cpu.slots(self.cpu_slots, want=1):
            return self._run(data)

    def _run(self, data: bytes) -> bytes:
        with self.lock:
            if self.stopping:
                raise CompressFailed("stopped")
            child = proc.start(
                self.squeezer.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            self.running.add(child)
        try:
            out, err = child.communicate(data)
        finally:
            with self.lock:
                self.running.discard(child)
            proc.stop(child)
        if child.returncode != 0:
            raise CompressFailed(f"{self.squeezer.command[0]} failed ({child.returncode}): {err.decode().strip()}")
        return out

    def stop(self) -> None:
        with self.lock:
            self.stopping = True
            children = list(self.running)
        for child in children:
            proc.stop(child)


def sparse_tar(
    disk: Path,
    output: Path,
    squeezer: Squeezer,
    label: str,
    cpu_slots: Path | None = None,
    fixed: int | None = None,
    tar_format: str = "gnu",
) -> None:
    """tar --sparse of disk (stored under its own name), compressed segment by segment.

    fixed: compress that many segments at once; None: one per free CPU slot.
    """
    tar_cmd = [
        "tar",
        "--create",
        "--sparse",
        f"--format={tar_format}",
        "--numeric-owner",
        "--owner=0",
        "--group=0",
        "--directory",
        str(disk.parent),
        "--file",
        "-",
        disk.name,
    ]
    segments = _Segments(squeezer, cpu_slots, fixed)
    pending: collections.deque[Future] = collections.deque()
    tar = proc.start(tar_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    pool = ThreadPoolExecutor(segments.workers, thread_name_prefix="compress")
    assert tar.stdout is not None and tar.stderr is not None  # both PIPE
    try:
        with open(output, "wb") as sink, StageProgress(label, total=allocated_bytes(disk)) as progress:
            while True:
                data = tar.stdout.read(squeezer.segment)
                if not data:
                    break
                # At most one segment waiting per worker: memory stays bounded.
                while len(pending) > segments.workers:
                    sink.write(pending.popleft().result())
                pending.append(pool.submit(segments.compress, data))
                progress.update(advance=len(data))
            while pending:
                sink.write(pending.popleft().result())
        if tar.wait() != 0:
            raise CompressFailed(f"tar of {disk} failed ({tar.returncode}): {tar.stderr.read().decode().strip()}")
    finally:
        # Stop before waiting for the threads: on an interruption or a
        # failure, no queued segment may start another compressor.
        segments.stop()
        pool.shutdown(wait=True, cancel_futures=True)
        proc.stop(tar)


def qemu_img_convert(args: list[str], label: str) -> None:
    """qemu-img convert with its -p percentages as progress."""
    child = proc.start(["qemu-img", "convert", "-p", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert isinstance(child.stdout, io.BufferedReader)  # stdout=PIPE, binary
    seen = b""
    with StageProgress(label, total=100, unit="steps") as progress:
        try:
            while chunk := child.stdout.read1(4096):
                seen = (seen + chunk)[-4096:]
                percents = _QEMU_IMG_PERCENT.findall(seen)
                if percents:
                    progress.update(completed=float(percents[-1]), status="% converted")
            status = child.wait()
        finally:
            proc.stop(child)
    if status != 0:
        raise CompressFailed(f"qemu-img convert failed ({status}): {seen.decode(errors='replace').strip()[-500:]}")


def qcow2(raw: Path, output: Path, threads: int, label: str) -> None:
    """A compressed qcow2; -m/-W let qemu-img compress clusters in parallel."""
    qemu_img_convert(
        ["-f", "raw", "-O", "qcow2", "-c", "-m", str(max(2, 4 * threads)), "-W", str(raw), str(output)], label
    )


def vhd_tar_xz(
    raw: Path, output: Path, squeezer: Squeezer, label: str, cpu_slots: Path | None = None, fixed: int | None = None
) -> None:
    """Azure's format: a fixed VHD whose size is a whole number of MiB, in a sparse tar."""
    size = raw.stat().st_size
    if size % MIB:
        raise CompressFailed(f"{raw} is {size} bytes; Azure needs a whole number of MiB")
    with tempfile.TemporaryDirectory(prefix=".vhd.", dir=output.parent) as scratch:
        vhd = Path(scratch) / "disk.vhd"
        qemu_img_convert(
            ["-f", "raw", "-O", "vpc", "-o", "subformat=fixed,force_size=on", str(raw), str(vhd)], f"{label} (vhd)"
        )
        if vhd.stat().st_size != size + 512:  # a fixed VHD is the disk plus a 512-byte footer
            raise CompressFailed(f"{vhd} is {vhd.stat().st_size} bytes, expected {size + 512}")
        sparse_tar(vhd, output, squeezer, label, cpu_slots, fixed)
