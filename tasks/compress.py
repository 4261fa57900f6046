"""The compress stage: each format a vendor asks for, from disk.raw.

    tar.xz      disk.raw in a sparse GNU tar, xz (most vendors)
    qcow2       compressed qcow2 (qemu-img convert -c)
    vhd.tar.xz  disk.raw as a fixed-size VHD (Azure), disk.vhd in a sparse tar, xz
    tar.gz      disk.raw in an oldgnu sparse tar, gzip (what GCE's image import reads)

GNU tar --sparse stores only the blocks the image uses (FAI's last step
discarded the free ones), so reading a 2 GiB disk holding 700 MB costs
seconds; the compressor's threads are where the time goes. They are sized
to the CPU slots the stage gets (tasks/cpu.py). The tar stream passes
through this process on its way to the compressor only to count bytes for
progress.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from . import atomic, cpu, proc
from .errors import StageFailed
from .layout import CellFiles
from .matrix import Cell, CompressSettings
from .progress import StageProgress

CHUNK = 1 << 20
MIB = 1 << 20
_QEMU_IMG_PERCENT = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


class CompressFailed(StageFailed):
    pass


def compress_config(cell: Cell, settings: CompressSettings) -> dict:
    return {"formats": list(cell.vendor.formats), "xz_level": settings.xz_level}


def compress(cell: Cell, files: CellFiles, settings: CompressSettings, cpu_slots: Path) -> None:
    with cpu.slots(cpu_slots, want=settings.xz_threads or cpu.cores()) as threads:
        if settings.xz_threads:
            threads = settings.xz_threads
        for fmt in cell.vendor.formats:
            with atomic.output(files.artifact(fmt), keep_suffix=True) as partial:
                label = f"{fmt} {cell.name}"
                if fmt == "tar.xz":
                    sparse_tar(files.raw, partial, xz_command(settings.xz_level, threads), label)
                elif fmt == "qcow2":
                    qcow2(files.raw, partial, threads, label)
                elif fmt == "vhd.tar.xz":
                    vhd_tar_xz(files.raw, partial, xz_command(settings.xz_level, threads), label)
                elif fmt == "tar.gz":
                    sparse_tar(files.raw, partial, gzip_command(threads), label, tar_format="oldgnu")
                else:  # matrix.py admits only the formats above
                    raise CompressFailed(f"{cell.name}: no compressor for format {fmt!r}")


def xz_command(level: int, threads: int) -> list[str]:
    return ["xz", f"-{level}", f"--threads={threads}", "--stdout", "-"]


def gzip_command(threads: int) -> list[str]:
    # pigz writes the same gzip format on every core; gzip is the fallback.
    if shutil.which("pigz"):
        return ["pigz", "-6", "--processes", str(threads), "--stdout"]
    return ["gzip", "-6", "--stdout"]


def allocated_bytes(path: Path) -> int:
    return path.stat().st_blocks * 512


def sparse_tar(disk: Path, output: Path, compressor: list[str], label: str, tar_format: str = "gnu") -> None:
    """tar --sparse of disk (stored under its own name), piped into compressor."""
    tar_cmd = ["tar", "--create", "--sparse", f"--format={tar_format}", "--numeric-owner", "--owner=0",
               "--group=0", "--directory", str(disk.parent), "--file", "-", disk.name]
    with open(output, "wb") as sink, StageProgress(label, total=allocated_bytes(disk)) as progress:
        squeezer = proc.start(compressor, stdin=subprocess.PIPE, stdout=sink, stderr=subprocess.PIPE)
        tar = proc.start(tar_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            while chunk := tar.stdout.read(CHUNK):
                squeezer.stdin.write(chunk)
                progress.update(advance=len(chunk))
            squeezer.stdin.close()
            tar_status, squeezer_status = tar.wait(), squeezer.wait()
            if tar_status != 0:
                raise CompressFailed(f"tar of {disk} failed ({tar_status}): {tar.stderr.read().decode().strip()}")
            if squeezer_status != 0:
                raise CompressFailed(f"{compressor[0]} failed ({squeezer_status}): "
                                     f"{squeezer.stderr.read().decode().strip()}")
        except BrokenPipeError:
            raise CompressFailed(f"{compressor[0]} stopped early: {squeezer.stderr.read().decode().strip()}") from None
        finally:
            proc.stop(tar)
            proc.stop(squeezer)


def qemu_img_convert(args: list[str], label: str) -> None:
    """qemu-img convert with its -p percentages as progress."""
    child = proc.start(["qemu-img", "convert", "-p", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
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
    qemu_img_convert(["-f", "raw", "-O", "qcow2", "-c", "-m", str(max(2, 4 * threads)), "-W",
                      str(raw), str(output)], label)


def vhd_tar_xz(raw: Path, output: Path, compressor: list[str], label: str) -> None:
    """Azure's format: a fixed VHD whose size is a whole number of MiB, in a sparse tar."""
    size = raw.stat().st_size
    if size % MIB:
        raise CompressFailed(f"{raw} is {size} bytes; Azure needs a whole number of MiB")
    with tempfile.TemporaryDirectory(prefix=".vhd.", dir=output.parent) as scratch:
        vhd = Path(scratch) / "disk.vhd"
        qemu_img_convert(["-f", "raw", "-O", "vpc", "-o", "subformat=fixed,force_size=on",
                          str(raw), str(vhd)], f"{label} (vhd)")
        if vhd.stat().st_size != size + 512:  # a fixed VHD is the disk plus a 512-byte footer
            raise CompressFailed(f"{vhd} is {vhd.stat().st_size} bytes, expected {size + 512}")
        sparse_tar(vhd, output, compressor, label)
