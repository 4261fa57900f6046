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
this is how xz's own threads split their work too (independent blocks).

Cutting: one equal segment per core to begin with, none smaller than three
dictionaries (xz's own block size for threads: the ratio stays within a
fraction of a percent of one stream's). Equal bytes do not take equal time
(measured: one half of a cloud image took 18 % longer than the other), so a
core whose segment is done takes half of what another has not yet fed to
its compressor, down to pieces of 8 MiB: every core compresses to the
end, and a core that gets its slot late, or only after a boot test freed
it, joins in the same way. A piece starts with an empty dictionary, and what
that costs depends on the data (measured on an ec2 image: 0.3 % of the whole
output at one point, 0.7 % for a 38 MiB piece at another), so before a split
zstd, with xz's window, estimates what the piece would lose, and the splits of
a stream together may lose at most SPLIT_BUDGET; a split beyond it is not
made and the tail stays with its core. The segments' boundaries thus
depend on the run, the decompressed stream never. When nothing is left worth
splitting, the idle core takes the other formats (qcow2): they fill the xz
tail instead of following it.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import os
import re
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tasks.errors import StageFailed
from tasks.model.layout import CellFiles
from tasks.model.matrix import Cell, CompressSettings
from tasks.progress import StageProgress
from tasks.system import atomic, cpu, proc

MIB = 1 << 20
# xz's dictionary size per preset (xz(1)).
XZ_DICTIONARY_MIB = {0: 0.25, 1: 1, 2: 2, 3: 4, 4: 4, 5: 8, 6: 8, 7: 16, 8: 32, 9: 64}
MIN_SEGMENT = 32 * MIB
# The least a split gives an idle core; a split needs twice that unread. At
# xz -9 a core compresses about 1.3 MiB a second: with pieces of a dictionary
# (64 MiB) or a quarter of one, the 30 s tail measured on a cloud image
# (2 x 290 MiB) stayed with one core; 8 MiB leaves tails of seconds, at the cost
# of a few more fresh starts (fractions of a percent).
MIN_PIECE = 8 * MIB
# Input handed to a compressor at a time: what a split cannot take back any more.
FEED = 1 * MIB
# What a stream's splits may cost together, as a share of its compressed size
# (estimated, see _Segments._fresh_start_cost): the first cut's own fresh starts
# measured 0.1-0.3 %, and the estimate ranged from 0.3 to 2 times xz's real loss.
SPLIT_BUDGET = 0.0025
# The formats made from the tar stream in segments; the others (qcow2) are
# one job each, started when a core falls idle.
SEGMENTED = ("tar.xz", "vhd.tar.xz", "tar.gz")
_QEMU_IMG_PERCENT = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


class CompressFailed(StageFailed):
    pass


@dataclass(frozen=True)
class Squeezer:
    """A compressor whose outputs concatenate: one single-threaded process per segment."""

    command: tuple[str, ...]  # reads stdin, writes stdout
    smallest: int  # bytes of input the first segments need to keep the ratio
    piece: int = MIN_PIECE  # the least a split gives to an idle core
    history: int = 0  # the window a fresh start loses (0: too small to matter, splits are free)
    glibc_tunables: tuple[str, ...] = ()  # added to the environment's GLIBC_TUNABLES

    def environment(self) -> dict[str, str] | None:
        """The compressor's environment: this process's, with its tunables (None: the same)."""
        if not self.glibc_tunables:
            return None
        tunables = [t for t in os.environ.get("GLIBC_TUNABLES", "").split(":") if t]
        return {**os.environ, "GLIBC_TUNABLES": ":".join([*tunables, *self.glibc_tunables])}


# Debian's kernels give transparent huge pages only to memory that asks for
# them (madvise); with this tunable glibc's malloc asks, so xz's match finder
# (about 670 MiB at -9, read at random) lives on 2 MiB pages. Measured, the
# same bytes out: two 200 MB segments of a cloud image side by side, 4-5 % less
# CPU each; ec2's whole 902 MiB stream through one xz, 334.6 s instead of 366.2 s.
HUGE_PAGES = "glibc.malloc.hugetlb=1"


def xz(level: int) -> Squeezer:
    return Squeezer(
        ("xz", f"-{level}", "--threads=1", "--stdout", "-"),
        smallest=max(int(3 * XZ_DICTIONARY_MIB[level] * MIB), MIN_SEGMENT),
        history=int(XZ_DICTIONARY_MIB[level] * MIB),
        glibc_tunables=(HUGE_PAGES,),
    )


def fresh_start_estimator(history: int) -> Squeezer:
    """zstd at its fastest over history's window: what a piece gains from what precedes it, about 0.3 s per 100 MiB."""
    window_log = max(10, math.ceil(math.log2(history)))
    return Squeezer(("zstd", "-1", f"--long={window_log}", "--threads=1", "--stdout", "-"), smallest=0)


def gzip() -> Squeezer:
    return Squeezer(("gzip", "-6", "--no-name", "--stdout"), MIN_SEGMENT)


@dataclass(frozen=True)
class Cut:
    """How a stream is cut to begin with: count segments of size bytes, the last taking the rest."""

    count: int
    size: int


def cut(stream: int, workers: int, squeezer: Squeezer) -> Cut:
    """One equal segment per worker, fewer (at least one) where they would be smaller than squeezer.smallest."""
    count = max(1, min(workers, stream // squeezer.smallest))
    return Cut(count, max(1, math.ceil(stream / count)))


def compress_config(cell: Cell, settings: CompressSettings) -> dict:
    return {"formats": list(cell.vendor.formats), "xz_level": settings.xz_level}


def compress(cell: Cell, files: CellFiles, settings: CompressSettings, cpu_slots: Path) -> None:
    # xz_threads 0: as many compressors at once as there are free CPU slots.
    fixed = settings.xz_threads or None
    formats = cell.vendor.formats
    for fmt in formats:  # matrix.py admits only these
        if fmt not in (*SEGMENTED, "qcow2"):
            raise CompressFailed(f"{cell.name}: no compressor for format {fmt!r}")
    # Workers stop (their processes ended) before the partial files are removed or renamed.
    with contextlib.ExitStack() as outputs, Workers(fixed or cpu.cores(), None if fixed else cpu_slots) as workers:
        partial = {fmt: outputs.enter_context(atomic.output(files.artifact(fmt), keep_suffix=True)) for fmt in formats}
        whole: list[Future] = []

        def queue_whole_image_formats() -> None:
            if "qcow2" in formats:
                label = f"qcow2 {cell.name}"
                whole.append(workers.submit(lambda: qcow2(files.raw, partial["qcow2"], label, workers)))

        streamed = [fmt for fmt in formats if fmt in SEGMENTED]
        for fmt in streamed:
            label = f"{fmt} {cell.name}"
            # Queued behind the last stream's compressors: the first of them to fall idle runs them.
            queued = queue_whole_image_formats if fmt == streamed[-1] else None
            if fmt == "tar.xz":
                sparse_tar(files.raw, partial[fmt], xz(settings.xz_level), label, workers, queued=queued)
            elif fmt == "vhd.tar.xz":
                vhd_tar_xz(files.raw, partial[fmt], xz(settings.xz_level), label, workers, queued=queued)
            else:
                sparse_tar(files.raw, partial[fmt], gzip(), label, workers, "oldgnu", queued=queued)
        if not streamed:
            queue_whole_image_formats()
        for job in whole:
            job.result()


def allocated_bytes(path: Path) -> int:
    return path.stat().st_blocks * 512


class Workers:
    """Threads that run a compression's processes, each holding CPU slots while it runs.

    cpu_slots None: run as many processes as there are workers, taking no slots
    (compress.xz_threads fixed, or tests).
    """

    def __init__(self, count: int, cpu_slots: Path | None = None):
        self.count = count
        self.cpu_slots = cpu_slots
        self.pool = ThreadPoolExecutor(count, thread_name_prefix="compress")
        self.running: set[subprocess.Popen] = set()
        self.lock = threading.Lock()
        self.stopping = False

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc) -> None:
        # Stop before waiting for the threads: on an interruption or a
        # failure, no queued job may start another process.
        self.stop()
        self.pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, job: Callable[[], object]) -> Future:
        return self.pool.submit(job)

    @contextlib.contextmanager
    def slots(self, want: int, abandon: Callable[[], bool] | None = None) -> Iterator[int]:
        """Hold between 1 and want CPU slots; yield how many (want, without slots; 0 if abandoned)."""
        if self.cpu_slots is None:
            yield want
            return
        with cpu.slots(self.cpu_slots, want=want, abandon=lambda: self.stopping or bool(abandon and abandon())) as got:
            yield got

    def start(self, command, **popen_args) -> subprocess.Popen:
        with self.lock:
            if self.stopping:
                raise CompressFailed("stopped")
            child = proc.start(command, **popen_args)
            self.running.add(child)
            return child

    def finish(self, child: subprocess.Popen) -> None:
        with self.lock:
            self.running.discard(child)
        proc.stop(child)

    def squeeze(self, squeezer: Squeezer, feed: Callable[[], bytes | None]) -> bytes:
        """The compressed stream of what feed() returns, until it returns None."""
        with tempfile.TemporaryFile() as errors:
            child = self.start(
                squeezer.command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=errors,
                env=squeezer.environment(),
            )
            assert child.stdin is not None and child.stdout is not None  # both PIPE
            output: list[bytes] = []
            stdout = child.stdout
            reader = threading.Thread(target=lambda: output.append(stdout.read()), daemon=True)
            reader.start()
            try:
                with contextlib.suppress(BrokenPipeError):  # the compressor failed: its status says why
                    while (data := feed()) is not None:
                        child.stdin.write(data)
                    child.stdin.close()
                reader.join()
                proc.reap(child)
            finally:
                self.finish(child)
                reader.join()
            if child.returncode != 0:
                errors.seek(0)
                message = errors.read().decode(errors="replace").strip()
                raise CompressFailed(f"{squeezer.command[0]} failed ({child.returncode}): {message}")
        return output[0]

    def stop(self) -> None:
        with self.lock:
            self.stopping = True
            children = list(self.running)
        for child in children:
            proc.stop(child)


class _Spool:
    """The tar stream in an unnamed file, written as tar produces it and read at any offset."""

    def __init__(self, directory: Path):
        self.file = tempfile.TemporaryFile(dir=directory)  # gone with the process, however it ends
        self.written = 0
        self.length: int | None = None  # known once tar has ended
        self.closed = False
        self.changed = threading.Condition()

    def fill(self, source: IO[bytes]) -> None:
        while chunk := source.read(FEED):
            os.write(self.file.fileno(), chunk)  # unbuffered: readers pread it at once
            with self.changed:
                self.written += len(chunk)
                self.changed.notify_all()
        with self.changed:
            self.length = self.written
            self.changed.notify_all()

    def read(self, offset: int, size: int) -> bytes:
        with self.changed:
            self.changed.wait_for(lambda: self.closed or self.length is not None or self.written >= offset + size)
            if self.closed:
                raise CompressFailed("stopped")
        return os.pread(self.file.fileno(), size, offset)

    def wait(self, timeout: float) -> None:
        """Until tar has written more, or timeout seconds."""
        with self.changed:
            if self.length is None and not self.closed:
                self.changed.wait(timeout)
            if self.closed:
                raise CompressFailed("stopped")

    def close(self) -> None:
        """No more reading: a reader waiting, or coming, raises."""
        with self.changed:
            self.closed = True
            self.changed.notify_all()


@dataclass
class _Segment:
    start: int
    end: int | None  # None: to the end of the stream
    fed: int  # input up to here is the compressor's
    running: bool = False
    output: bytes | None = None
    kept: bool = False  # a split would cost too much: the segment runs to its end


class _Segments:
    """The segments of one stream: the first cut, then split whenever a worker falls idle."""

    def __init__(self, spool: _Spool, first: Cut, squeezer: Squeezer, progress: StageProgress | None):
        self.spool = spool
        self.squeezer = squeezer
        self.progress = progress
        starts = [i * first.size for i in range(first.count)]
        self.all = [
            _Segment(start, starts[i + 1] if i + 1 < len(starts) else None, fed=start) for i, start in enumerate(starts)
        ]
        self.lock = threading.Lock()
        self.stream = first.count * first.size  # about the stream's length (the cut rounds up)
        self.spent = 0.0  # what the splits so far cost, as a share of the stream's compressed size
        self.estimator = fresh_start_estimator(squeezer.history) if squeezer.history else None

    def _unfed(self, segment: _Segment) -> int:
        """Input the segment has not been given yet; of the last one, what tar has written so far."""
        if segment.end is not None:
            return segment.end - segment.fed
        return (self.spool.length if self.spool.length is not None else self.spool.written) - segment.fed

    def _next(self) -> _Segment | None:
        """What an idle worker should do next (lock held): a segment not begun, or a split of the largest rest."""
        for segment in self.all:
            if not segment.running and segment.output is None:
                return segment
        running = [(self._unfed(s), s) for s in self.all if s.running and s.output is None and not s.kept]
        if running:
            rest, largest = max(running, key=lambda pair: pair[0])
            if rest >= 2 * self.squeezer.piece:
                return largest
        return None

    def left(self) -> bool:
        """Whether an idle worker may still find something: tar is still writing, or there is work now."""
        with self.lock:
            return self.spool.length is None or self._next() is not None

    def take(self, workers: Workers) -> _Segment | None:
        """A segment for an idle worker: one not begun, or the second half of the largest rest; None: nothing."""
        while True:
            with self.lock:
                chosen = self._next()
                if chosen is None:
                    return None
                if not chosen.running:
                    chosen.running = True
                    return chosen
                # Split: the running segment stops halfway through what it has not been fed yet.
                rest = self._unfed(chosen)
                middle = chosen.fed + rest // 2
            # Estimated without the lock: the running compressor goes on being fed meanwhile.
            cost = self._fresh_start_cost(workers, middle, rest - rest // 2) if self.estimator else 0.0
            with self.lock:
                moved = chosen.output is not None or chosen.fed >= middle
                if moved or (chosen.end is not None and chosen.end <= middle):
                    continue  # it moved on meanwhile (or another core split it): look again
                if self.spent + cost > SPLIT_BUDGET:
                    chosen.kept = True
                    continue
                self.spent += cost
                piece = _Segment(middle, chosen.end, fed=middle, running=True)
                chosen.end = middle
                self.all.insert(self.all.index(chosen) + 1, piece)
                return piece

    def _fresh_start_cost(self, workers: Workers, start: int, length: int) -> float:
        """What a piece from start loses by starting with an empty dictionary, as a share of the stream's
        compressed size (estimated: the piece's loss in zstd's bytes, scaled by its share of the stream)."""
        assert self.estimator is not None
        history = self.squeezer.history
        length = min(length, history)  # past its first window, a piece compresses as it would have anyway
        behind = max(0, start - history)

        def size(begin: int, end: int) -> int:
            assert self.estimator is not None
            return len(workers.squeeze(self.estimator, self._reader(begin, end)))

        before = size(behind, start)
        with_history = size(behind, start + length) - before
        alone = size(start, start + length)
        return max(0, alone - with_history) / max(with_history, 1) * length / self.stream

    def _reader(self, begin: int, end: int) -> Callable[[], bytes | None]:
        """A feed of the stream from begin to end."""
        position = begin

        def feed() -> bytes | None:
            nonlocal position
            data = self.spool.read(position, min(8 * FEED, end - position)) if position < end else b""
            position += len(data)
            return data or None

        return feed

    def feed(self, segment: _Segment) -> bytes | None:
        """The segment's next input, None at its end."""
        with self.lock:
            end = segment.end if segment.end is not None else self.spool.length
            size = FEED if end is None else min(FEED, end - segment.fed)
            offset = segment.fed
            segment.fed += size
        data = self.spool.read(offset, size) if size > 0 else b""
        with self.lock:
            segment.fed -= size - len(data)  # the stream ended sooner
            if data:
                if self.progress:  # None: nobody watches (the tests of the segments alone)
                    self.progress.update(advance=len(data))
        return data or None

    def work(self, workers: Workers) -> None:
        """One worker: a CPU slot, then segments until none is left worth splitting."""
        with workers.slots(1, abandon=lambda: not self.left()) as got:
            while got:
                segment = self.take(workers)
                if segment is None:
                    if self.spool.length is not None:
                        return  # nothing left worth splitting, and no more to come
                    self.spool.wait(timeout=0.2)  # nothing to split yet while tar writes: wait for more
                    continue
                segment.output = workers.squeeze(self.squeezer, functools.partial(self.feed, segment))

    def joined(self) -> Iterator[bytes]:
        """The compressed segments in stream order, once each is done and together they cover the stream."""
        position = 0
        for segment in self.all:
            if segment.output is None or segment.start != position:
                raise CompressFailed(f"segment at byte {segment.start} missing or out of place (expected {position})")
            position = segment.fed
            yield segment.output
        if position != self.spool.length:
            raise CompressFailed(f"compressed {position} bytes of a {self.spool.length}-byte stream")


def sparse_tar(
    disk: Path,
    output: Path,
    squeezer: Squeezer,
    label: str,
    workers: Workers,
    tar_format: str = "gnu",
    queued: Callable[[], None] | None = None,
) -> None:
    """tar --sparse of disk (stored under its own name), compressed by every worker segment by segment.

    The first cut is by the stream's expected length, the data the disk holds
    (tar's headers make it differ by a fraction; the last segment runs to the
    end). queued runs once the workers are queued: what it queues then runs
    on the first worker that falls idle.
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
    expected = allocated_bytes(disk)
    spool = _Spool(output.parent)
    jobs: list[Future] = []
    try:
        with StageProgress(label, total=expected) as progress:
            segments = _Segments(spool, cut(expected, workers.count, squeezer), squeezer, progress)
            jobs = [workers.submit(lambda: segments.work(workers)) for _ in range(workers.count)]
            if queued:
                queued()
            tar = workers.start(tar_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            assert tar.stdout is not None and tar.stderr is not None  # both PIPE
            try:
                spool.fill(tar.stdout)
                proc.reap(tar)
                if tar.returncode != 0:
                    error = tar.stderr.read().decode().strip()
                    raise CompressFailed(f"tar of {disk} failed ({tar.returncode}): {error}")
            finally:
                workers.finish(tar)
            wait(jobs, return_when=FIRST_EXCEPTION)  # a failed worker ends the stage at once
            for job in jobs:
                job.result()
        with open(output, "wb") as sink:
            for compressed in segments.joined():
                sink.write(compressed)
    finally:
        spool.close()  # wakes workers waiting for input that will not come
        for job in jobs:
            job.cancel()
        if not all(job.done() for job in jobs):  # interrupted or failed: stop the compressors, then the threads
            workers.stop()
            wait(jobs)
        spool.file.close()  # no worker reads it any more


def xz_stream_sizes(path: Path) -> list[int]:
    """The uncompressed size of each xz stream of a file, in order (what the segments were)."""
    listing = proc.run(["xz", "--robot", "--list", "--verbose", str(path)])
    return [int(line.split("\t")[6]) for line in listing.splitlines() if line.startswith("stream\t")]


def qemu_img_convert(args: list[str], label: str, workers: Workers | None = None) -> None:
    """qemu-img convert with its -p percentages as progress (a process of workers, when given)."""
    command = ["qemu-img", "convert", "-p", *args]
    child = (workers.start if workers else proc.start)(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
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
            (workers.finish if workers else proc.stop)(child)
    if status != 0:
        raise CompressFailed(f"qemu-img convert failed ({status}): {seen.decode(errors='replace').strip()[-500:]}")


def qcow2(raw: Path, output: Path, label: str, workers: Workers) -> None:
    """A compressed qcow2 with the CPU slots free when it starts; -m/-W compress clusters in parallel."""
    with workers.slots(workers.count) as threads:
        qemu_img_convert(
            ["-f", "raw", "-O", "qcow2", "-c", "-m", str(max(2, 4 * threads)), "-W", str(raw), str(output)],
            label,
            workers,
        )


def vhd_tar_xz(
    raw: Path,
    output: Path,
    squeezer: Squeezer,
    label: str,
    workers: Workers,
    queued: Callable[[], None] | None = None,
) -> None:
    """Azure's format: a fixed VHD whose size is a whole number of MiB, in a sparse tar."""
    size = raw.stat().st_size
    if size % MIB:
        raise CompressFailed(f"{raw} is {size} bytes; Azure needs a whole number of MiB")
    with tempfile.TemporaryDirectory(prefix=".vhd.", dir=output.parent) as scratch:
        vhd = Path(scratch) / "disk.vhd"
        qemu_img_convert(
            ["-f", "raw", "-O", "vpc", "-o", "subformat=fixed,force_size=on", str(raw), str(vhd)],
            f"{label} (vhd)",
            workers,
        )
        if vhd.stat().st_size != size + 512:  # a fixed VHD is the disk plus a 512-byte footer
            raise CompressFailed(f"{vhd} is {vhd.stat().st_size} bytes, expected {size + 512}")
        sparse_tar(vhd, output, squeezer, label, workers, queued=queued)
