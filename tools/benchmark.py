#!/usr/bin/env python3
"""Measure the real graph and print figures (nothing here is asserted).

    .venv/bin/python tools/benchmark.py [--cell bookworm-nocloud-amd64] [sections...]

Sections (all by default):

  stages       each stage of one cell as its own `doit <stage>:<cell>` in a
               fresh work directory: wall seconds, CPU seconds (user + system,
               every child process included) and CPU/wall; image bytes before
               and after compression; the boot test's milestones; a no-op run
               of that cell.
  compression  each of --compress-cells' disk.raw through `xz -9 -T1` and
               through ours (one xz per core, idle cores splitting what is
               left): seconds, how busy the cores were, bytes, speed-up and
               size against xz -9 -T1 of the same run, the xz streams made.
  rebuild      each of --rebuild-cells (default: the push tier's cells) built
               again from the cached base and package cache: once making
               every step (its step cache emptied), then --repeat times
               restoring the steps that one kept (tasks/stages/stepcache.py),
               then once with a new dated version (a new build time, as
               every run without version= has): wall and CPU seconds of each, the
               slowest phases of the build, and the first's wall time over
               the others'.
  boottest     the boot-test stage of each of --rebuild-cells, --repeat
               times, with the firmwares side by side (1 vCPU each, the
               default) and one after the other (2 vCPUs each): wall and CPU
               seconds, each boot's accelerator and milestones.
  arm64        nocloud of each of --arm64-releases on amd64 and on arm64,
               each built (every step made) and boot-tested from its cached base alone: seconds
               of each, the build's slowest phases, and arm64's time over
               amd64's.
  push         the push tier built again from its cached bases (its cells'
               tasks forgotten, every step made; one job per core): wall, CPU, and how busy the
               cores were, CPU / (wall x cores).
  noop         a no-op run over the full matrix, and `doit list --all`. In
               --full-workdir when the full tier was built there; otherwise
               in a work directory of stand-ins (below). Its baseline: doit
               alone over the same graph (each task's files, task
               dependencies and an up-to-date check, an empty action), so
               the figure shows what the graph's own code adds to doit's.

  catalogue    the storage's catalogue and web index written again over nginx's
               WebDAV, for storages of 30 and 120 daily versions of the push
               tier's cells (small stand-in files laid out by publication's own
               writer): as a publication writes it (the sizes of files the
               catalogue already lists taken from it, its own version's page only)
               against `doit catalogue` (every size asked, every page): seconds
               and requests of each, and the ratio.
  builder      the builder image (tasks/builder): made from nothing (a package
               cache of its own), made again from that package cache (its
               archive removed), and `doit builder` once it is there; then a
               CI job's start-up: its first command in the loaded image
               (tools/in-builder), against the baseline, tools/setup-host
               setting up a fresh plain Debian 13 container (debootstrap's
               minbase), as every job did before.

  edit         one package added to one vendor's list (ec2's): the tasks, bases
               and cells a run of the push tier and of the full matrix would
               execute (tasks/stale.py, over a finished work directory of
               stand-ins whose bases hold the mirror's real package lists),
               against the same with the changed bases taken as stale (the
               base's key of the package lists, before it was what apt
               resolves); CPU seconds at the stages section's figures.

A no-op run stats files and reads none (the checker compares mtimes), so its
cost does not depend on what the files hold. The stand-in work directory has
a small file at every target of the full tier (published ones in a local
storage too), and doit's dependency database records them as built: what
`doit reset-dep` records, plus the values the up-to-date checks keep
(config digests, the base's age), as an execution would. The no-op run that
follows is the real `doit tier=full` over the real 36-cell graph.

A benchmark is a report: a command that fails (a cell that does not build or
boot) ends the figures of that cell or section only. Its output is shown,
the others are measured, and the run ends with what failed (exit status 1).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tasks import registry  # noqa: E402
from tasks.model import matrix as matrix_module  # noqa: E402
from tasks.model.layout import CellFiles  # noqa: E402
from tasks.model.matrix import Cell  # noqa: E402
from tasks.stages import compress as compression  # noqa: E402
from tasks.stages import incus, stepcache  # noqa: E402
from tasks.system.checksum import sha256_file, sha512_file  # noqa: E402
from tests import imagelists  # noqa: E402

CORES = len(os.sched_getaffinity(0))


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# Python as an installation runs it: with its bytecode cache (some shells,
# containers among them, set PYTHONDONTWRITEBYTECODE; every doit run would
# then compile each module of the graph again, about 0.1 s).
ENV = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}


class CommandFailed(Exception):
    """A measured command failed: the figures that needed it are not printed."""

    def __init__(self, cmd: list[str], result: subprocess.CompletedProcess) -> None:
        self.output = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
        super().__init__(f"{' '.join(cmd)} failed ({result.returncode})")


def timed(cmd: list[str], check: bool = True, cwd: Path | None = None, **env: str) -> tuple[float, float, str]:
    cpu, wall = children_cpu(), time.monotonic()
    result = subprocess.run(cmd, capture_output=True, text=True, env={**ENV, **env}, cwd=cwd)
    wall, cpu = time.monotonic() - wall, children_cpu() - cpu
    if check and result.returncode != 0:
        raise CommandFailed(cmd, result)
    return wall, cpu, result.stdout


class Report:
    """Each measurement is made whatever failed before it; the run ends with what failed."""

    def __init__(self) -> None:
        self.measured = 0
        self.failed: list[tuple[str, CommandFailed]] = []

    def attempt(self, name: str, measure: Callable[[], None]) -> bool:
        self.measured += 1
        try:
            measure()
        except CommandFailed as failure:
            self.failed.append((name, failure))
            tail = "\n".join(f"    | {line}" for line in failure.output.splitlines())
            print(f"  {name}: FAILED, no figures: {failure}\n{tail}", flush=True)
            return False
        return True

    def end(self) -> int:
        print(f"\n== {self.measured - len(self.failed)} of {self.measured} measurements done")
        for name, failure in self.failed:
            print(f"  FAILED {name}: {failure}")
        return 1 if self.failed else 0


def doit(*args: str) -> list[str]:
    return [sys.executable, "-m", "doit", "-f", str(REPO / "dodo.py"), *args]


def executed(out: str) -> int:
    return sum(line.startswith(".  ") for line in out.splitlines())


def mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def row(name: str, wall: float, cpu: float) -> str:
    return f"  {name:<26} {wall:>8.1f} {cpu:>8.1f} {cpu / wall if wall else 0:>9.2f}"


def stage_targets(cell: Cell) -> list[tuple[str, str]]:
    """(stage, doit target) of each stage a cell goes through, from the registry."""
    return [
        (stage.name, f"{stage.name}:{cell.base_name if stage.scope is registry.Scope.BASE else cell.name}")
        for stage in registry.stages()
        if not stage.manual
    ]


def stages(cell: Cell, base: Path, options: list[str]) -> None:
    print(f"\n== stages of {cell.name}")
    print(f"  {'stage':<26} {'wall s':>8} {'CPU s':>8} {'CPU/wall':>9}")
    rows = []
    for stage, target in stage_targets(cell):
        wall, cpu, _ = timed(doit(target, *options))
        rows.append((stage, wall, cpu))
        STAGE_CPU[stage] = cpu
        print(row(stage, wall, cpu), flush=True)
    print(row("total", sum(r[1] for r in rows), sum(r[2] for r in rows)))

    cell_dir = base / "build" / cell.name
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
        reached = ", ".join(f"{n} at {t:.1f} s" for n, t in m.items())
        print(f"\n  boot test through {b['firmware']} ({b['accelerator']}): {reached}")

    last = stage_targets(cell)[-1][1]
    wall, cpu, out = timed(doit(last, *options))
    print(f"\n  no-op run of {last}: {wall:.2f} s wall, {cpu:.2f} s CPU, {executed(out)} tasks executed")
    vm_fingerprint(CellFiles.of(base / "build", cell))


def vm_fingerprint(files: CellFiles) -> None:
    """What publication's Incus fingerprint costs (tasks/stages/incus.py), against the qcow2's SHA-256
    that SHA256SUMS already needed: the median of three, the file in the page cache."""
    disk, tarball = files.artifact(incus.DISK_FORMAT.value), files.incus_metadata
    if not (disk.exists() and tarball.exists()):
        return

    def median(action: Callable[[], object]) -> float:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            action()
            times.append(time.perf_counter() - start)
        return sorted(times)[1]

    alone = median(partial(sha256_file, disk))
    both = median(partial(incus.fingerprint, tarball, disk))
    print(
        f"\n  Incus fingerprint of {mib(disk.stat().st_size)} qcow2 + {tarball.stat().st_size} B metadata: "
        f"{both:.2f} s, against {alone:.2f} s for the qcow2's SHA-256 ({both / alone:.2f}x)"
    )


def compression_of(cell: str, base: Path, options: list[str], xz_level: int) -> None:
    if not (base / "build" / cell / "disk.raw").exists():
        timed(doit(f"build:{cell}", *options))
    compress_figures(cell, base, xz_level)


def compress_figures(cell: str, base: Path, xz_level: int) -> None:
    """The cell's tar stream through xz -9 -T1 (the baseline) and through ours, in this run."""
    raw = base / "build" / cell / "disk.raw"
    data = raw.stat().st_blocks * 512
    print(
        f"\n== compression of {cell}'s disk.raw ({mib(raw.stat().st_size)} disk, {mib(data)} of data), "
        f"sparse tar, {CORES} cores"
    )
    columns = f"{'wall s':>7} {'CPU s':>7} {'busy':>5} {'bytes':>13} {'speed-up':>8} {'size':>7}"
    print(f"  {'compressor':<30} {columns}  streams")
    one_stream = compression.Squeezer(("xz", "-9", "--threads=1", "--stdout", "-"), smallest=1 << 60, piece=1 << 60)
    candidates = [("xz -9 -T1 (baseline)", one_stream, 1), (f"ours, xz -{xz_level}", compression.xz(xz_level), CORES)]
    baseline = None
    with tempfile.TemporaryDirectory(dir=base) as scratch:
        for name, squeezer, workers in candidates:
            out = Path(scratch) / "out.tar.xz"
            cpu, wall = children_cpu(), time.monotonic()
            with compression.Workers(workers, Path(scratch) / "cpu") as pool:
                compression.sparse_tar(raw, out, squeezer, name, pool)
            wall, cpu = time.monotonic() - wall, children_cpu() - cpu
            size = out.stat().st_size
            baseline = baseline or (wall, size)
            streams = compression.xz_stream_sizes(out)
            print(
                f"  {name:<30} {wall:>7.1f} {cpu:>7.1f} {100 * cpu / (wall * workers):>4.0f}% {size:>13,} "
                f"{baseline[0] / wall:>7.2f}x {100 * (size / baseline[1] - 1):>+6.2f}%  "
                f"{len(streams)}: {', '.join(f'{n / 2**20:.0f}' for n in streams)} MiB",
                flush=True,
            )


def boot_ways(base: Path) -> list[tuple[str, Path]]:
    """The matrix with the boot test's two ways of using the cores: (label, matrix file)."""
    import yaml

    data = yaml.safe_load((REPO / "matrix.yaml").read_text())
    ways = []
    for label, cpus in (("side by side, 1 vCPU each", 1), ("one after the other, 2 vCPUs each", 2)):
        data["boot_test"]["cpus"] = cpus
        variant = base / f"matrix-boot-{cpus}.yaml"
        variant.write_text(yaml.safe_dump(data, sort_keys=False))
        ways.append((label, variant))
    return ways


def boottests(cell: str, ways: list[tuple[str, Path]], base: Path, options: list[str], repeat: int) -> None:
    timed(doit(f"build:{cell}", *options))  # the base and the build, when missing
    for label, variant in ways:
        for _ in range(repeat):
            opts = [*options, f"matrix={variant}"]
            timed(doit("forget", f"boottest:{cell}", *opts))
            wall, cpu, _ = timed(doit(f"boottest:{cell}", *opts), check=False)
            result = json.loads((base / "build" / cell / "boottest.json").read_text())
            boots = "; ".join(
                f"{b['firmware']} {b['accelerator']} "
                + " ".join(f"{n} {t:.1f}" for n, t in b["milestones"].items())
                + (f" (KVM tried {b['kvm_attempt']['seconds']:.1f} s)" if b.get("kvm_attempt") else "")
                for b in result["boots"]
            )
            print(
                f"  {cell:<28} {label:<34} {wall:6.1f} s wall {cpu:6.1f} s CPU {result['verdict']}: {boots}",
                flush=True,
            )


def forget_cells(cells: list[str], stages: list[str], options: list[str]) -> None:
    timed(doit("forget", *(f"{stage}:{cell}" for cell in cells for stage in stages), *options))


def forget_steps(base: Path, cells: list[str]) -> None:
    """The cells' next builds make every step (none restored from their step cache)."""
    for cell in cells:
        shutil.rmtree(stepcache.directory(base / "build", cell), ignore_errors=True)


def push(cells: list[str], base: Path, options: list[str]) -> None:
    """The push tier built again from its cached bases, one job per core (doit's default)."""
    timed(doit(*options))  # whatever is missing, the bases included
    forget_cells(cells, [stage.name for stage in registry.cell_chain()], options)
    forget_steps(base, cells)
    wall, cpu, out = timed(doit(*options))
    again_wall, again_cpu, again = timed(doit(*options))
    print(f"\n== the push tier from its cached bases ({executed(out)} tasks, {CORES} jobs on {CORES} cores)")
    print(f"  {wall:.1f} s wall, {cpu:.1f} s CPU: CPU / (wall x cores) = {cpu / (wall * CORES):.2f}")
    print(f"  no-op run right after: {again_wall:.2f} s wall, {again_cpu:.2f} s CPU, {executed(again)} tasks executed")


def slowest_phases(base: Path, cell: str, count: int = 4) -> str:
    """The build's longest phases, from its build-info.json (tasks/stages/fai.py, PhaseClock)."""
    phases = json.loads((base / "build" / cell / "build-info.json").read_text()).get("phases", {})
    slowest = sorted(phases.items(), key=lambda item: -item[1])[:count]
    return ", ".join(f"{name} {seconds:.1f} s" for name, seconds in slowest)


def assembly_share(base: Path, cell: str, wall: float) -> str:
    """The disk's assembly from the tree (tasks/stages/diskassembly.py): its seconds, and its share of the build."""
    phases = json.loads((base / "build" / cell / "build-info.json").read_text()).get("phases", {})
    seconds = phases.get("disk assembly", 0.0)
    return f"{seconds:.1f} s ({seconds / wall:.0%} of the build's wall time)"


def arm64(vendor: str, release: str, base: Path, options: list[str], report: Report) -> None:
    """One cell's build and boot test from its cached base on each architecture, one after the other."""
    print(f"\n== {release}-{vendor} built and boot-tested from its cached base, each architecture alone")
    walls: dict[str, float] = {}
    for arch in ("amd64", "arm64"):
        cell = f"{release}-{vendor}-{arch}"
        report.attempt(cell, partial(arm64_cell, cell, base, options, walls))
    if len(walls) == 2:
        print(f"  arm64 / amd64: {walls['arm64'] / walls['amd64']:.2f}")
    recorded = imagelists.RECORDED / f"{release}-{vendor}-arm64"
    if "arm64" in walls and imagelists.recorded(recorded, "packages").is_file():
        # Faster must not mean different: the lists of an image built entirely under emulation.
        for kind, (missing, extra) in imagelists.differences(base / "build" / recorded.name, recorded).items():
            verdict = "the same" if not (missing or extra) else f"DIFFER: missing {missing[:10]}, extra {extra[:10]}"
            print(f"  {kind} against the slow way's ({recorded.name}): {verdict}")


def arm64_cell(cell: str, base: Path, options: list[str], walls: dict[str, float]) -> None:
    timed(doit(f"boottest:{cell}", *options))  # the base and a first build, when missing
    forget_cells([cell], ["build", "boottest"], options)
    forget_steps(base, [cell])
    build_wall, build_cpu, _ = timed(doit(f"build:{cell}", *options))
    boot_wall, boot_cpu, _ = timed(doit(f"boottest:{cell}", *options))
    walls[cell.rsplit("-", 1)[1]] = build_wall + boot_wall
    print(
        f"  {cell:<28} build {build_wall:6.1f} s ({build_cpu:6.1f} s CPU), boot test {boot_wall:6.1f} s "
        f"({boot_cpu:6.1f} s CPU): {build_wall + boot_wall:6.1f} s",
        f"\n    slowest build phases: {slowest_phases(base, cell)}",
        f"; disk assembly {assembly_share(base, cell, build_wall)}",
        sep="",
        flush=True,
    )


def rebuild(cell: str, base: Path, options: list[str], repeat: int) -> None:
    timed(doit(f"build:{cell}", *options))  # the base and a first build, when missing
    # Last, a new dated version, as each `doit` run without version= gives: the
    # build's time and the disk's identifiers are new, the steps still restored
    # (the initramfs holds the base's time, not the build's: identity.py).
    dated = [option for option in options if not option.startswith("version=")]
    dated.append(f"version={time.strftime('%Y%m%d-%H%M', time.gmtime())}")
    runs = []
    for attempt in range(2 + repeat):
        if attempt == 0:
            forget_steps(base, [cell])
        forget_cells([cell], ["build"], options)
        wall, cpu, out = timed(doit(f"build:{cell}", *(dated if attempt == 1 + repeat else options)))
        assert executed(out) == 1, out
        runs.append((wall, cpu, f"{slowest_phases(base, cell)}; disk assembly {assembly_share(base, cell, wall)}"))
    (made_wall, made_cpu, made_phases), restored, new_version = runs[0], runs[1:-1], runs[-1]
    walls = sorted(w for w, _, _ in restored)
    median = walls[len(walls) // 2]
    restored_walls = ", ".join(f"{w:.1f}" for w, _, _ in restored)
    print(
        f"  {cell:<30} every step made: wall {made_wall:.1f} s, CPU {made_cpu:.1f} s",
        f"\n    slowest phases: {made_phases}",
        f"\n  {'':<30} steps restored: wall {restored_walls} s (median {median:.1f});"
        f" CPU {', '.join(f'{c:.1f}' for _, c, _ in restored)} s; made / restored {made_wall / median:.2f}",
        f"\n    slowest phases of the last: {restored[-1][2]}",
        f"\n  {'':<30} a new version: wall {new_version[0]:.1f} s, CPU {new_version[1]:.1f} s;"
        f" made / new version {made_wall / new_version[0]:.2f}",
        f"\n    slowest phases: {new_version[2]}",
        sep="",
        flush=True,
    )


# doit reset-dep, saving also the values up-to-date checks keep (config_changed's
# digest, timeout's time): what doit saves after executing a task.
_RECORD_STATE = """
import sys
from doit.cmd_base import DodoTaskLoader
from doit.dependency import Dependency
from doit.doit_cmd import DoitMain

save_success = Dependency.save_success
def save_with_values(self, task, result_hash=None):
    task.save_extra_values()
    save_success(self, task, result_hash)
Dependency.save_success = save_with_values
sys.exit(DoitMain(DodoTaskLoader()).run(sys.argv[1:]))
"""


# The graph's shape, as dodo.py makes it for the options given (argv), and the
# plain values of its DOIT_CONFIG: what a run of doit alone over the same graph needs.
_DUMP_SHAPE = """
import json, runpy, sys
from doit import doit_cmd, loader
doit_cmd.reset_vars()
for option in sys.argv[2:]:
    doit_cmd.set_var(*option.split("=", 1))
dodo_file = sys.argv[1]
sys.argv[1:] = ["list"]  # a reading command: the work directory is not locked
dodo = runpy.run_path(dodo_file, run_name="dodo")
config = {k: v for k, v in dodo["DOIT_CONFIG"].items() if isinstance(v, (str, int, list))}
tasks = loader.load_tasks(dodo, allow_delayed=True)
shape = [
    {"name": t.name, "actions": bool(t.actions), "file_dep": sorted(t.file_dep), "targets": t.targets,
     "task_dep": t.task_dep, "checks": len(t.uptodate)}
    for t in tasks
]
json.dump({"config": config, "tasks": shape}, sys.stdout)
"""

# doit alone over that shape: each task with its files, task dependencies and
# a config_changed check where the real one has checks, and an empty action.
_FLOOR_DODO = """
import json
from pathlib import Path
from doit.tools import config_changed

HERE = Path(__file__).parent
SHAPE = json.loads((HERE / "shape.json").read_text())
DOIT_CONFIG = {**SHAPE["config"], "dep_file": str(HERE / ".doit.db")}

def nothing():
    pass

def creator(tasks):
    def create():
        for name, task in tasks:
            if not task["actions"]:
                yield {"name": name, "actions": None, "task_dep": task["task_dep"]}
                continue
            yield {
                "name": name,
                "actions": [(nothing,)],
                "file_dep": task["file_dep"],
                "targets": task["targets"],
                "task_dep": task["task_dep"],
                "uptodate": [config_changed(task["name"])] if task["checks"] else [],
            }
    return create

groups = {}
for task in SHAPE["tasks"]:
    basename, _, name = task["name"].partition(":")
    groups.setdefault(basename, []).append((name or None, task))
globals().update({f"task_{basename}": creator(tasks) for basename, tasks in groups.items()})
"""


def doit_floor(options: list[str], attempts: int) -> list[tuple[float, float, str]]:
    """No-op runs of doit alone over the graph's shape (its floor), as timed() gives them."""
    dumped = subprocess.run(
        [sys.executable, "-c", _DUMP_SHAPE, str(REPO / "dodo.py"), *options],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=ENV,
    )
    if dumped.returncode != 0:
        raise CommandFailed(dumped.args, dumped)
    with tempfile.TemporaryDirectory(prefix="doit-floor.") as directory:
        here = Path(directory)
        (here / "shape.json").write_text(dumped.stdout)
        (here / "dodo.py").write_text(_FLOOR_DODO)
        timed([sys.executable, "-c", _RECORD_STATE, "reset-dep", "-f", str(here / "dodo.py")])
        floor = [sys.executable, "-m", "doit", "-f", str(here / "dodo.py")]
        return [timed(floor) for _ in range(attempts)]


def stand_in_workdir(base: Path, options: list[str]) -> list[str]:
    """A work directory where every target of the full tier exists (see the module's doc)."""
    from tasks import graph
    from tasks.model import plan as plan_module
    from tasks.model.records import BaseShares, PublishReceipt
    from tasks.stages import base as base_module
    from tests import finished

    workdir, storage = base / "full-standin" / "build", base / "full-standin" / "storage"
    opts = [o for o in options if not o.startswith(("workdir=", "storage="))] + [
        f"workdir={workdir}",
        f"storage={storage}",
        "tier=full",
    ]
    values = dict(o.split("=", 1) for o in opts)
    the_plan = plan_module.from_options(REPO, values.get)
    for task in graph.load_tasks(the_plan).values():
        # Targets elsewhere (the release project's pipeline file of the repository) are left alone.
        for target in (Path(t) for t in task.targets if Path(t).is_relative_to(workdir)):
            target.parent.mkdir(parents=True, exist_ok=True)
            if target == base_module.BaseFiles.of(workdir, task.name.partition(":")[2]).shares:
                # What the base holds for its images as they are: its check asks apt nothing.
                check = finished.shares_check(task)
                record = BaseShares(list(check.include), [list(s) for s in check.selections], [], 0)
                target.write_text(json.dumps(record.to_json()))
            elif target.name == "published.json":
                published = storage / "standin" / target.parent.name
                published.mkdir(parents=True, exist_ok=True)
                (published / "image").write_text(target.parent.name)
                receipt = PublishReceipt(
                    storage=the_plan.storage.url,
                    directory=f"standin/{target.parent.name}",
                    sizes={"image": len(target.parent.name)},
                )
                target.write_text(json.dumps(receipt.to_json()))
            else:
                target.write_text(f"stand-in for {target.name}\n")
    recorded = subprocess.run(
        [sys.executable, "-c", _RECORD_STATE, "reset-dep", "-f", str(REPO / "dodo.py"), *opts],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    if recorded.returncode != 0:
        raise CommandFailed(recorded.args, recorded)
    return opts


NOOP_RUNS = 3


def noop(full_workdir: Path, base: Path, options: list[str]) -> None:
    opts = [o for o in options if not o.startswith("workdir=")] + [f"workdir={full_workdir}", "tier=full"]
    status = subprocess.run(doit("list", "--all", "--status", *opts), capture_output=True, text=True).stdout
    stale = [line.split()[1] for line in status.splitlines() if line.startswith("R ")]
    list_wall, _, _ = timed(doit("list", "--all", *opts))
    tasks = sum(1 for line in status.splitlines() if ":" in line.split()[1])
    print(f"\n== the full matrix ({tasks} tasks)")
    print(f"  doit list --all: {list_wall:.2f} s wall")
    if stale:
        # Running doit there would build every stale cell: stand-ins instead of hours of builds.
        print(
            f"  {full_workdir}: {len(stale)} tasks are not up to date (e.g. {', '.join(stale[:3])}); "
            f"measuring in a work directory of stand-ins"
        )
        opts = stand_in_workdir(base, options)
    walls = []
    for attempt in range(1, NOOP_RUNS + 1):
        wall, cpu, out = timed(doit(*opts), check=False)
        walls.append(wall)
        print(
            f"  no-op doit tier=full, run {attempt}: {wall:.2f} s wall, {cpu:.2f} s CPU, "
            f"{executed(out)} tasks executed",
            flush=True,
        )
    # The baseline: what doit itself needs for this graph, whatever the tasks are made of.
    floor = doit_floor(opts, NOOP_RUNS)
    ours, alone = sorted(walls)[NOOP_RUNS // 2], sorted(wall for wall, _, _ in floor)[NOOP_RUNS // 2]
    print(
        f"  doit alone over the same graph (empty actions): {', '.join(f'{w:.2f}' for w, _, _ in floor)} s wall,"
        f" {executed(floor[-1][2])} tasks executed\n"
        f"  medians {ours:.2f} / {alone:.2f} s: {ours / alone:.2f}x doit's floor, {ours - alone:.2f} s the graph's own"
    )


# CPU seconds of each stage of --cell, when the stages section measured them in this run.
STAGE_CPU: dict[str, float] = {}
EDITED_CLASS = "EC2"  # the ec2 vendor's own list


def edit_cost(base: Path, options: list[str]) -> None:
    """What one package added to one vendor's list would make again, without building: a finished
    run's work directory of stand-ins (tests/finished.py, the bases' package lists real), the edit,
    and the tasks a run of each tier would execute (tasks/stale.py). The baseline, in the same
    run: the same with every base whose images' selections changed taken as stale, as the base's
    key did when it held the package lists themselves."""
    import dataclasses

    from tasks import graph, stale
    from tasks.model import plan as plan_module
    from tests import finished

    top = base / "edit-cost"
    space = top / "fai_config"
    shutil.copytree(REPO / "fai_config", space)
    values = dict(o.split("=", 1) for o in options)
    values.update(workdir=str(top / "build"), storage=str(top / "storage"), tier="full")

    def the_plan(tier: str):
        made = plan_module.from_options(REPO, {**values, "tier": tier}.get)
        return dataclasses.replace(made, config_space=space)

    started = time.monotonic()
    finished.finish(the_plan("full"), top / "bases")
    print(f"\n== one package added to {EDITED_CLASS}'s list (package_config/{EDITED_CLASS}): the tasks it costs")
    print(f"  a finished work directory of stand-ins, every base's lists real: {time.monotonic() - started:.0f} s")
    edited = space / "package_config" / EDITED_CLASS
    edited.write_text(edited.read_text() + "jq\n")
    print(f"  {'tier':<6} {'':<22} {'tasks':>6} {'bases':>6} {'cells':>6} {'CPU s':>8}")
    for tier in ("push", "full"):
        current = the_plan(tier)
        tasks = graph.load_tasks(current)
        roots = [stage.name for stage in registry.cell_chain()]
        bases = [t for name, t in tasks.items() if name.startswith(f"{registry.BASE.name}:") and t.actions]
        # What the old key made stale: every base whose images' selections the edit changed.
        changed = [
            t.name
            for t in bases
            if json.loads(Path(finished.shares_check(t).record).read_text())["selections"]
            != [list(s) for s in finished.shares_check(t).selections]
        ]
        start = time.monotonic()
        now = stale.would_run(tasks, current.workdir / ".doit.db", roots)
        asked = time.monotonic() - start
        before = stale.would_run(tasks, current.workdir / ".doit.db", roots, assume_stale=changed)
        for label, names in ((f"now ({asked:.1f} s to check)", now), ("base key of the lists", before)):
            # A known failure's xfail-<stage> task runs that stage: at the stage's cost.
            kinds = [name.partition(":")[0].removeprefix("xfail-") for name in names]
            cells = len({name.partition(":")[2] for name in names if not name.startswith("base:")})
            cpu = sum(STAGE_CPU.get(kind, float("nan")) for kind in kinds)
            print(
                f"  {tier:<6} {label:<22} {len(names):>6} {kinds.count('base'):>6} {cells:>6} "
                f"{cpu if STAGE_CPU else float('nan'):>8.0f}"
            )
        if now:
            print(f"  {tier}: {len(before) / len(now):.1f}x fewer tasks than the key of the lists")
    if not STAGE_CPU:
        print("  (CPU seconds: run with the stages section, whose per-stage CPU of --cell they use)")
    else:
        print("  (CPU seconds: every cell and base at --cell's measured cost per stage; arm64's is higher)")


def builder(base: Path) -> None:
    from tasks.builder import inputs
    from tests import plainsystem

    print("\n== the builder image: made, and a CI job's start-up in it against tools/setup-host's")
    workdir = base / "builder"
    made = timed(doit("builder", f"workdir={workdir}"))
    archive = inputs.archive(workdir)
    size = archive.stat().st_size
    archive.unlink()
    cached = timed(doit("builder", f"workdir={workdir}"))
    current = timed(doit("builder", f"workdir={workdir}"))
    print(f"  {'':<26} {'wall s':>8} {'cpu s':>8} {'cpu/wall':>9}")
    print(row("from nothing", *made[:2]))
    print(row("from its package cache", *cached[:2]))
    print(row("up to date", *current[:2]))
    print(f"  archive {mib(size)}")

    tag = inputs.tag()
    had = subprocess.run(["podman", "image", "exists", tag]).returncode == 0
    plain = f"localhost/benchmark-plain-trixie:{base.name[-8:].lower()}"
    try:
        load = timed(["podman", "load", "--quiet", "--input", str(archive)])
        start = timed([str(REPO / "tools/in-builder"), "doit", "--version"], IMAGES_BUILDER=tag)
        # The baseline: a fresh plain Debian 13 and the README's set-up, as each job ran it.
        plainsystem.make(inputs.RELEASE, base / "plain", plain, unsafe_io=False, run=timed)
        checkout = base / "checkout"
        for name in ("tools", "pyproject.toml", "tasks/builder"):
            source = REPO / name
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            copy = shutil.copytree if source.is_dir() else shutil.copy2
            copy(source, checkout / name)
        trust = plainsystem.registry_trust(checkout / "host-ca.crt")
        setup = timed(
            # As each job's script began: everything set up (tools/setup-host without a command).
            [str(REPO / "tools/unprivileged"), "env", *trust, "tools/setup-host"],
            cwd=checkout,
            UNPRIVILEGED_IMAGE=plain,
        )
        print(row("podman load (once a host)", *load[:2]))
        print(row("job start: builder image", *start[:2]))
        print(row("job start: setup-host", *setup[:2]))
        print(f"  a job's start-up in the builder image: {setup[0] / start[0]:.0f}x quicker than tools/setup-host's")
    finally:
        subprocess.run(["podman", "rmi", "--force", plain], capture_output=True)
        if not had:
            subprocess.run(["podman", "rmi", "--force", tag], capture_output=True)


def catalogue_writes(cells: list[Cell], base: Path) -> None:
    from tasks.stages import catalogue, publish
    from tasks.storage import Location, RetryPolicy
    from tests import servers

    print("\n== the catalogue written again over WebDAV: as a publication does, and as doit catalogue does")
    for versions in (30, 120):
        nginx = servers.Nginx(base / f"catalogue-{versions}", locking=True).start()
        try:
            local = Location((nginx.root / "images").as_uri()).open()
            for n in range(versions):
                version = f"2026{1 + n // 28:02d}{1 + n % 28:02d}-1"
                uploads = []
                for cell in cells:
                    for suffix in (*cell.vendor.formats, *(["incus.tar.xz"] if incus.applies(cell) else []), "json"):
                        source = base / "catalogue-files" / f"{cell.image_name(version)}.{suffix}"
                        source.parent.mkdir(parents=True, exist_ok=True)
                        source.write_text(f"stand-in {source.name}\n")
                        uploads.append(publish.Upload(source, source.name, sha512_file(source)))
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                    publish.publish_directory(local, publish.daily_dir(cells[0].release.name, version), uploads)
            dav = Location(nginx.url).open(RetryPolicy(2, 0.1))
            newest = publish.daily_dir(cells[0].release.name, version)
            figures = {}
            for name, anew, changed in (("doit catalogue", True, ()), ("a publication", False, (newest,))):
                before, start = nginx.requests(), time.monotonic()
                with dav.locked("benchmark"):
                    catalogue.write(dav, anew=anew, changed=changed)
                figures[name] = (time.monotonic() - start, nginx.requests() - before)
            (anew_s, anew_r), (pub_s, pub_r) = figures["doit catalogue"], figures["a publication"]
            print(
                f"  {versions} versions x {len(cells)} cells: a publication's {pub_s:.2f} s, {pub_r} requests; "
                f"doit catalogue's {anew_s:.2f} s, {anew_r} requests ({anew_s / pub_s:.1f}x the time)"
            )
        finally:
            nginx.stop()
    shutil.rmtree(base / "catalogue-files", ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    parser.add_argument(
        "sections",
        nargs="*",
        default=[
            "stages",
            "compression",
            "boottest",
            "rebuild",
            "arm64",
            "push",
            "noop",
            "edit",
            "catalogue",
            "builder",
        ],
    )
    parser.add_argument("--cell", default="bookworm-nocloud-amd64")
    parser.add_argument("--rebuild-cells", nargs="+", help="default: the push tier's cells")
    parser.add_argument(
        "--compress-cells", nargs="+", help="default: the push tier's cells and an 8 GiB one, bookworm-ec2-amd64"
    )
    parser.add_argument("--arm64-releases", nargs="+", default=["bookworm"], help="releases of the arm64 section")
    parser.add_argument("--repeat", type=int, default=3, help="rebuilds of each cell (rebuild section)")
    parser.add_argument("--xz-level", type=int, help="default: the matrix's compress.xz_level")
    parser.add_argument("--workdir", type=Path, help="default: a new directory under /var/tmp, removed afterwards")
    parser.add_argument(
        "--full-workdir", type=Path, default=REPO / "build", help="where the full tier was built (for the noop section)"
    )
    args = parser.parse_args()

    matrix = matrix_module.load(REPO / "matrix.yaml")
    xz_level = args.xz_level if args.xz_level is not None else matrix.compress.xz_level
    rebuild_cells = args.rebuild_cells or [cell.name for cell in matrix.tier("push")]
    base = args.workdir or Path(tempfile.mkdtemp(prefix="image-benchmark.", dir="/var/tmp"))
    # One version for every run (a serial, not a time: the build's time is its base's), so rebuilds are alike.
    version = "version=20260101-1"
    options = [f"workdir={base / 'build'}", f"storage={base / 'storage'}", version, f"xz_level={xz_level}"]
    print(f"benchmark, {time.strftime('%Y-%m-%d %H:%M %Z')}, {CORES} cores")
    report = Report()
    attempt = report.attempt
    try:
        if "stages" in args.sections:
            attempt(f"stages of {args.cell}", partial(stages, matrix.cell(args.cell), base, options))
        if "compression" in args.sections:
            for cell in args.compress_cells or [*rebuild_cells, "bookworm-ec2-amd64"]:
                attempt(f"compression of {cell}", partial(compression_of, cell, base, options, xz_level))
        if "boottest" in args.sections:
            print(f"\n== boot-test stage, every firmware to the vendor's milestone ({args.repeat} times each)")
            ways = boot_ways(base)
            for cell in rebuild_cells:
                attempt(f"boot test of {cell}", partial(boottests, cell, ways, base, options, args.repeat))
        if "rebuild" in args.sections:
            print(
                "\n== built again from the cached base and package cache: every step made, "
                f"then {args.repeat} times restoring them"
            )
            for cell in rebuild_cells:
                attempt(f"rebuild of {cell}", partial(rebuild, cell, base, options, args.repeat))
        if "push" in args.sections:
            attempt("the push tier", partial(push, [cell.name for cell in matrix.tier("push")], base, options))
        if "arm64" in args.sections:
            for release in args.arm64_releases:
                arm64("nocloud", release, base, options, report)
        if "noop" in args.sections:
            attempt("the no-op run", partial(noop, args.full_workdir, base, options))
        if "edit" in args.sections:
            attempt("the cost of one vendor's edit", partial(edit_cost, base, options))
        if "catalogue" in args.sections:
            attempt("the catalogue", partial(catalogue_writes, matrix.tier("push"), base))
        if "builder" in args.sections:
            attempt("the builder image", partial(builder, base))
    finally:
        if not args.workdir:
            shutil.rmtree(base, ignore_errors=True)
    sys.exit(report.end())


if __name__ == "__main__":
    main()
