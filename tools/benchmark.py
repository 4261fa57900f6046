#!/usr/bin/env python3
"""Measure one cell through the real graph, stage by stage, and print figures.

    .venv/bin/python tools/benchmark.py [--cell bookworm-nocloud-amd64] [--xz-level 3]

Each stage runs as its own `doit <stage>:<cell>` in a fresh work directory,
so its figures are that stage's alone (plus doit's start-up): wall seconds,
CPU seconds (user + system, all child processes included) and CPU/wall.
Then: image bytes before and after compression, the boot test's milestones,
and the time of a no-op run. Nothing here is asserted; these are numbers to
read and to compare between changes.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STAGES = ("build", "compress", "boottest", "manifest", "publish")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_doit(args: list[str]) -> tuple[float, float, str]:
    cpu, wall = children_cpu(), time.monotonic()
    result = subprocess.run([sys.executable, "-m", "doit", "-f", str(REPO / "dodo.py"), *args],
                            capture_output=True, text=True)
    wall, cpu = time.monotonic() - wall, children_cpu() - cpu
    if result.returncode != 0:
        sys.exit(f"doit {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return wall, cpu, result.stdout


def mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", default="bookworm-nocloud-amd64")
    parser.add_argument("--xz-level", type=int, help="default: the matrix's compress.xz_level")
    parser.add_argument("--workdir", type=Path, help="default: a new directory under /var/tmp, removed afterwards")
    args = parser.parse_args()

    base = args.workdir or Path(tempfile.mkdtemp(prefix="image-benchmark.", dir="/var/tmp"))
    options = [f"workdir={base / 'build'}", f"storage={base / 'storage'}", "version=benchmark"]
    if args.xz_level is not None:
        options.append(f"xz_level={args.xz_level}")
    try:
        rows = []
        for stage in STAGES:
            print(f"running {stage}:{args.cell} ...", file=sys.stderr, flush=True)
            wall, cpu, _ = timed_doit([f"{stage}:{args.cell}", *options])
            rows.append((stage, wall, cpu))
        noop_wall, noop_cpu, out = timed_doit([f"publish:{args.cell}", *options])
        ran = [line for line in out.splitlines() if line.startswith(".  ")]
        list_wall, _, _ = timed_doit(["list", "--all", *options])

        cell_dir = base / "build" / args.cell
        raw = cell_dir / "disk.raw"
        boot = json.loads((cell_dir / "boottest.json").read_text())
        info = json.loads((cell_dir / "build-info.json").read_text())

        print(f"\nbenchmark of {args.cell} ({info['image_name']}), {time.strftime('%Y-%m-%d %H:%M %Z')}")
        print(f"{'stage':<10} {'wall s':>8} {'CPU s':>8} {'CPU/wall':>9}")
        for stage, wall, cpu in rows:
            print(f"{stage:<10} {wall:>8.1f} {cpu:>8.1f} {cpu / wall:>9.2f}")
        total_wall, total_cpu = sum(r[1] for r in rows), sum(r[2] for r in rows)
        print(f"{'total':<10} {total_wall:>8.1f} {total_cpu:>8.1f} {total_cpu / total_wall:>9.2f}")

        allocated = raw.stat().st_blocks * 512
        print("\nimage bytes")
        print(f"  disk.raw apparent   {mib(raw.stat().st_size):>14}")
        print(f"  disk.raw allocated  {mib(allocated):>14}  (data FAI wrote; free space was discarded)")
        for name in ("image.tar.xz", "image.qcow2"):
            path = cell_dir / name
            if path.exists():
                size = path.stat().st_size
                print(f"  {name:<19} {mib(size):>14}  ({allocated / size:.2f}x smaller than the data)")

        m = boot["milestones"]
        print(f"\nboot test ({boot['accelerator']}: {boot['accelerator_reason']})")
        print("  " + ", ".join(f"{name} at {m[name]:.1f} s" for name in ("kernel", "systemd", "login") if name in m))
        print(f"\nno-op run of publish:{args.cell}: {noop_wall:.2f} s wall, {noop_cpu:.2f} s CPU, "
              f"{len(ran)} tasks executed")
        print(f"doit list --all: {list_wall:.2f} s wall")
    finally:
        if not args.workdir:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
