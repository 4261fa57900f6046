"""The compress stage: the raw disk as a sparse tar in xz, and as a compressed qcow2.

GNU tar --sparse stores only the blocks the image uses (FAI's last step
discarded the free ones), so tar reads a 2 GiB disk holding 700 MB of data
in seconds; xz's threads are where the time goes. The tar stream passes
through this process on its way to xz only to count bytes for progress.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from .errors import StageFailed
from . import atomic, proc
from .layout import CellFiles
from .matrix import Cell, CompressSettings
from .progress import StageProgress

CHUNK = 1 << 20
_QEMU_IMG_PERCENT = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


class CompressFailed(StageFailed):
    pass


def xz_threads(settings: CompressSettings) -> int:
    return settings.xz_threads or os.cpu_count() or 1


def compress_config(cell: Cell, settings: CompressSettings) -> dict:
    return {"formats": list(cell.vendor.formats), "xz_level": settings.xz_level}


def compress(cell: Cell, files: CellFiles, settings: CompressSettings) -> None:
    for fmt in cell.vendor.formats:
        target = files.artifact(fmt)
        with atomic.output(target, keep_suffix=True) as partial:
            if fmt == "tar.xz":
                sparse_tar_xz(files.raw, partial, settings.xz_level, xz_threads(settings), f"tar.xz {cell.name}")
            elif fmt == "qcow2":
                qcow2(files.raw, partial, f"qcow2 {cell.name}")
            else:  # matrix.py admits only the formats above
                raise CompressFailed(f"{cell.name}: no compressor for format {fmt!r}")


def allocated_bytes(path: Path) -> int:
    return path.stat().st_blocks * 512


def sparse_tar_xz(raw: Path, output: Path, level: int, threads: int, label: str) -> None:
    """tar --sparse of raw (stored under its own name) piped into xz."""
    tar_cmd = ["tar", "--create", "--sparse", "--format=gnu", "--numeric-owner", "--owner=0", "--group=0",
               "--directory", str(raw.parent), "--file", "-", raw.name]
    xz_cmd = ["xz", f"-{level}", f"--threads={threads}", "--stdout", "-"]
    with open(output, "wb") as sink, StageProgress(label, total=allocated_bytes(raw)) as progress:
        xz = proc.start(xz_cmd, stdin=subprocess.PIPE, stdout=sink, stderr=subprocess.PIPE)
        tar = proc.start(tar_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            while chunk := tar.stdout.read(CHUNK):
                xz.stdin.write(chunk)
                progress.update(advance=len(chunk))
            xz.stdin.close()
            tar_status, xz_status = tar.wait(), xz.wait()
            if tar_status != 0:
                raise CompressFailed(f"tar of {raw} failed ({tar_status}): {tar.stderr.read().decode().strip()}")
            if xz_status != 0:
                raise CompressFailed(f"xz failed ({xz_status}): {xz.stderr.read().decode().strip()}")
        except BrokenPipeError:
            raise CompressFailed(f"xz stopped early: {xz.stderr.read().decode().strip()}") from None
        finally:
            proc.stop(tar)
            proc.stop(xz)


def qcow2(raw: Path, output: Path, label: str) -> None:
    """A compressed qcow2; -m/-W let qemu-img compress clusters on every core."""
    cmd = ["qemu-img", "convert", "-p", "-f", "raw", "-O", "qcow2", "-c", "-m", "16", "-W", str(raw), str(output)]
    child = proc.start(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
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
