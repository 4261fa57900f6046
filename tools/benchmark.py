#!/usr/bin/env python3
"""Measure the real graph and print figures (nothing here is asserted).

    .venv/bin/python tools/benchmark.py [--cell bookworm-nocloud-amd64] [sections...]

Sections (all by default):

  stages       each stage of one cell as its own `doit <stage>:<cell>` in a
               fresh work directory: wall seconds, CPU seconds (user + system,
               every child process included) and CPU/wall; image bytes before
               and after compression; the boot test's milestones; a no-op run
               of that cell; the cell's build again from the cached base and
               package cache.
  compression  the cell's disk.raw through the configured compressor and
               through `xz -9 -T1`: seconds, bytes, speed-up, size difference.
  push         a cold run of the push tier (fresh work directory, one job per
               core): wall, CPU, and how busy the cores were,
               CPU / (wall x cores).
  noop         a no-op run over the full matrix in --full-workdir (where the
               full tier was built), and `doit list --all`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tasks import compress as compression  # noqa: E402
from tasks import matrix as matrix_module  # noqa: E402

STAGES = ("build", "compress", "boottest", "manifest", "publish")
CORES = len(os.sched_getaffinity(0))


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(cmd: list[str], check: bool = True) -> tuple[float, float, str]:
    cpu, wall = children_cpu(), time.monotonic()
    result = subprocess.run(cmd, capture_output=True, text=True)
    wall, cpu = time.monotonic() - wall, children_cpu() - cpu
    if check and result.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return wall, cpu, result.stdout


def doit(*args: str) -> list[str]:
    return [sys.executable, "-m", "doit", "-f", str(REPO / "dodo.py"), *args]


def executed(out: str) -> int:
    return sum(line.startswith(".  ") for line in out.splitlines())


def mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def row(name: str, wall: float, cpu: float) -> str:
    return f"  {name:<26} {wall:>8.1f} {cpu:>8.1f} {cpu / wall if wall else 0:>9.2f}"


def stages(cell: str, base: Path, options: list[str]) -> None:
    print(f"\n== stages of {cell}")
    print(f"  {'stage':<26} {'wall s':>8} {'CPU s':>8} {'CPU/wall':>9}")
    rows = []
    for stage in ("base", *STAGES):
        target = f"base:{cell.split('-')[0]}-{cell.split('-')[-1]}" if stage == "base" else f"{stage}:{cell}"
        wall, cpu, _ = timed(doit(target, *options))
        rows.append((stage, wall, cpu))
        print(row(stage, wall, cpu), flush=True)
    print(row("total", sum(r[1] for r in rows), sum(r[2] for r in rows)))

    cell_dir = base / "build" / cell
    raw = cell_dir / "disk.raw"
    allocated = raw.stat().st_blocks * 512
    print("\n  image bytes")
    print(f"    disk.raw apparent   {mib(raw.stat().st_size):>14}")
    print(f"    disk.raw allocated  {mib(allocated):>14}  (data FAI wrote; free space was discarded)")
    for path in sorted(cell_dir.glob("image.*")):
        size = path.stat().st_size
        print(f"    {path.name:<19} {mib(size):>14}  ({allocated / size:.2f}x smaller than the data)")

    boot = json.loads((cell_dir / "boottest.json").read_text())
    for b in boot["boots"]:
        m = b["milestones"]
        reached = ", ".join(f"{n} at {m[n]:.1f} s" for n in ("kernel", "systemd", "login") if n in m)
        print(f"\n  boot test through {b['firmware']} ({b['accelerator']}): {reached}")

    wall, cpu, out = timed(doit(f"publish:{cell}", *options))
    print(f"\n  no-op run of publish:{cell}: {wall:.2f} s wall, {cpu:.2f} s CPU, {executed(out)} tasks executed")
    timed(doit("forget", f"build:{cell}", *options))
    wall, cpu, out = timed(doit(f"build:{cell}", *options))
    print(f"  build again from the cached base and package cache: {wall:.1f} s wall, {cpu:.1f} s CPU "
          f"({executed(out)} task executed)")


def compress_figures(cell: str, base: Path, xz_level: int) -> None:
    raw = base / "build" / cell / "disk.raw"
    data = raw.stat().st_blocks * 512
    print(f"\n== compression of {cell}'s disk.raw ({mib(data)} of data), sparse tar, {CORES} cores")
    print(f"  {'compressor':<34} {'wall s':>7} {'CPU s':>7} {'bytes':>13} {'speed-up':>8} {'size':>7}")
    whole = data + (64 << 20)  # one segment: the whole stream, as a plain xz -T1 pipeline
    candidates = [
        ("xz -9 -T1 (baseline)", compression.Squeezer(("xz", "-9", "--threads=1", "--stdout", "-"), whole), 1),
        (f"ours, xz -{xz_level} (configured)", compression.xz(xz_level), None),
        *([("ours, xz -9", compression.xz(9), None)] if xz_level != 9 else []),
        (f"xz -9 -T{CORES} (xz's own threads)",
         compression.Squeezer(("xz", "-9", f"--threads={CORES}", "--stdout", "-"), whole), 1),
    ]
    baseline = None
    with tempfile.TemporaryDirectory(dir=base) as scratch:
        for name, squeezer, fixed in candidates:
            out = Path(scratch) / "out.tar.xz"
            cpu, wall = children_cpu(), time.monotonic()
            compression.sparse_tar(raw, out, squeezer, name, cpu_slots=Path(scratch) / "cpu", fixed=fixed)
            wall, cpu = time.monotonic() - wall, children_cpu() - cpu
            size = out.stat().st_size
            baseline = baseline or (wall, size)
            print(f"  {name:<34} {wall:>7.1f} {cpu:>7.1f} {size:>13,} {baseline[0] / wall:>7.2f}x "
                  f"{100 * (size / baseline[1] - 1):>+6.1f}%", flush=True)


def push(options: list[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="image-benchmark-push.", dir="/var/tmp") as scratch:
        base = Path(scratch)
        opts = [o for o in options if not o.startswith(("workdir=", "storage="))]
        where = [f"workdir={base / 'build'}", f"storage={base / 'storage'}"]
        wall, cpu, out = timed(doit(*opts, *where))
        again_wall, again_cpu, again = timed(doit(*opts, *where))
    print(f"\n== cold run of the push tier ({executed(out)} tasks, {CORES} jobs on {CORES} cores)")
    print(f"  {wall:.1f} s wall, {cpu:.1f} s CPU: the cores were {100 * cpu / (wall * CORES):.0f} % busy")
    print(f"  no-op run right after: {again_wall:.2f} s wall, {again_cpu:.2f} s CPU, {executed(again)} tasks executed")


def noop(full_workdir: Path, options: list[str]) -> None:
    opts = [o for o in options if not o.startswith("workdir=")] + [f"workdir={full_workdir}", "tier=full"]
    status = subprocess.run(doit("list", "--all", "--status", *opts), capture_output=True, text=True).stdout
    stale = [line.split()[1] for line in status.splitlines() if line.startswith("R ")]
    list_wall, _, _ = timed(doit("list", "--all", *opts))
    tasks = sum(1 for line in status.splitlines() if ":" in line.split()[1])
    print(f"\n== the full matrix in {full_workdir} ({tasks} tasks)")
    print(f"  doit list --all: {list_wall:.2f} s wall")
    if stale:
        # Running doit here would build every stale cell: no figure rather than hours of builds.
        print(f"  no-op run not measured: {len(stale)} tasks are not up to date (e.g. {', '.join(stale[:3])}); "
              f"build the full tier there first (doit tier=full workdir={full_workdir})")
        return
    wall, cpu, out = timed(doit(*opts), check=False)
    print(f"  doit tier=full: {wall:.2f} s wall, {cpu:.2f} s CPU, {executed(out)} tasks executed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("sections", nargs="*", default=["stages", "compression", "push", "noop"])
    parser.add_argument("--cell", default="bookworm-nocloud-amd64")
    parser.add_argument("--xz-level", type=int, help="default: the matrix's compress.xz_level")
    parser.add_argument("--workdir", type=Path, help="default: a new directory under /var/tmp, removed afterwards")
    parser.add_argument("--full-workdir", type=Path, default=REPO / "build",
                        help="where the full tier was built (for the noop section)")
    args = parser.parse_args()

    xz_level = args.xz_level if args.xz_level is not None else \
        matrix_module.load(REPO / "matrix.yaml").compress.xz_level
    base = args.workdir or Path(tempfile.mkdtemp(prefix="image-benchmark.", dir="/var/tmp"))
    options = [f"workdir={base / 'build'}", f"storage={base / 'storage'}", "version=benchmark",
               f"xz_level={xz_level}"]
    print(f"benchmark, {time.strftime('%Y-%m-%d %H:%M %Z')}, {CORES} cores")
    try:
        if "stages" in args.sections:
            stages(args.cell, base, options)
        if "compression" in args.sections:
            if not (base / "build" / args.cell / "disk.raw").exists():
                timed(doit(f"build:{args.cell}", *options))
            compress_figures(args.cell, base, xz_level)
        if "push" in args.sections:
            push(options)
        if "noop" in args.sections:
            noop(args.full_workdir, options)
    finally:
        if not args.workdir:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
