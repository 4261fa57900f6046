"""The build stage: FAI over our config space into a directory, then the disk from files.

FAI installs the image into a plain directory (its `install` action, as
fai-diskimage runs it, but with no disk attached or mounted); the disk image
is then assembled from that tree and the files the config space made
(tasks/stages/diskassembly.py). No loop device and no mount of an image's
file system, anywhere.

FAI runs in private user, mount and PID namespaces (tasks/system/sandbox.py),
so a build needs no privilege on the host: root in a container without
--privileged will do. FAI's host-global state is private to each build, so
builds run side by side, and when a build ends, however it ends, every
process and mount of it (the tree's tmpfs, its /proc, /sys and /dev) is gone.

Each build starts from the shared base of its release and architecture
(tasks/stages/base.py) and shares a package cache with the other builds of that
release and architecture, so a rebuild fetches nothing it fetched before.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tasks.errors import StageFailed
from tasks.model import arch
from tasks.model.layout import CellFiles
from tasks.model.matrix import BuildSettings, Cell
from tasks.model.records import BuildInfo
from tasks.progress import StageProgress
from tasks.stages import base, diskassembly, faiconfig, identity, stepcache
from tasks.system import atomic, binfmt, cpu, hostenv, sandbox, toolstree, userns
from tasks.system.checksum import sha256_kept

# Bump when a change to the builder (not to the config space or matrix.yaml)
# must rebuild every image.
BUILDER_FORMAT = 4
# What the config space runs of this project (tasks/stages/imagecheck.py): a build
# depends on these files too.
TOOLS_ROOT = Path(__file__).resolve().parents[2]
# The Python that runs them there: this environment's, by its real path (a
# symlinked environment under /tmp would be hidden by the sandbox's own /tmp;
# its real directory is bound in when it lies under /tmp).
IN_BUILD_PYTHON = Path(sys.prefix).resolve() / "bin" / "python3"
IN_BUILD_MODULES = tuple(Path(__file__).resolve().parent / name for name in ("imagecheck.py", "imagefacts.py"))


@dataclass(frozen=True)
class BuildInputs:
    """What a build reads besides its cell: the config space, base and package cache."""

    config_space: Path
    base: Path  # the base system tarball
    package_cache: Path  # shared by every build (tasks/system/aptcache.py)
    step_cache: Path | None  # the cell's slow steps kept from its last build (stepcache.py); None: off
    version: str
    cpu_slots: Path  # a build keeps about one core busy (tasks/system/cpu.py)
    tools: Path  # the work directory's tools tree (tasks/system/toolstree.py), made by the first build
    # The image's programs built for the host, shared by every build (twins.py); None: none are made.
    twins: Path | None = None


# FAI tasks of an installation, in order, and the disk's assembly: the build's progress steps.
FAI_STEPS = [
    "partition",
    "mountdisks",
    "extrbase",
    "debconf",
    "repository",
    "updatebase",
    "instsoft",
    "configure",
    "tests",
    "finish",
    "chboot",
    "faiend",
    "assembly",
]
# A line that starts a phase of the build: a task of FAI's, a hook, or a script of configure or tests.
_PHASE_LINE = re.compile(
    r"^(?:Calling task_(\w+)|(?:Calling|Source) hook: (\S+)|Executing +\w+: (\S+)|("
    + re.escape(diskassembly.ASSEMBLY_LINE)
    + "))"
)
# Lines worth showing when a build fails.
_RELEVANT = re.compile(
    r"^E: |ERROR|FAILED|Error in task|error processing|returned an error|Traceback|"
    r"No such file|not found|cannot |Unable to|Failed to|No space left"
)


class BuildFailed(StageFailed):
    pass


class PhaseClock:
    """Where a build's time goes: seconds from each line that starts a phase to the next.

    Written into build-info.json (phases) and printed by tools/benchmark.py: under
    emulation, the phase names say which work emulation makes slow."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._phase = "start"
        self._since = clock()
        self.seconds: dict[str, float] = {}

    def line(self, line: str) -> str | None:
        """Note a line of FAI's output; the name of the FAI task it starts, if it starts one."""
        found = _PHASE_LINE.match(line)
        if not found:
            return None
        task, hook, script, assembly = found.groups()
        self._close()
        self._phase = (
            f"task {task}" if task else f"hook {hook}" if hook else f"script {script}" if script else "disk assembly"
        )
        return "assembly" if assembly else task

    def _close(self) -> None:
        now = self._clock()
        self.seconds[self._phase] = round(self.seconds.get(self._phase, 0.0) + now - self._since, 1)
        self._since = now

    def finished(self) -> dict[str, float]:
        self._close()
        return dict(self.seconds)


def fai_arch_facts(cell: Cell) -> dict[str, str]:
    """The architecture registry's facts the config space reads (tasks/model/arch.py)."""
    spec = cell.arch.kind.spec
    return {
        "IMAGE_FIRMWARE": " ".join(cell.arch.kind.firmware),
        "IMAGE_EFI_NAME": spec.efi_name,
        "IMAGE_GRUB_EFI": spec.grub_efi,
        "IMAGE_ROOT_PARTITION_TYPE": spec.root_partition_type,
        "IMAGE_ESP_PARTITION_TYPE": arch.ESP_PARTITION_TYPE,
        "IMAGE_BIOS_PARTITION_TYPE": arch.BIOS_BOOT_PARTITION_TYPE,
    }


def build_config(cell: Cell, settings: BuildSettings) -> dict:
    """Everything, besides the config-space files, that decides the image's content."""
    return {
        "builder_format": BUILDER_FORMAT,
        "release": cell.release.name,
        "arch": cell.arch.name,
        "vendor": cell.vendor.name,
        "fai_classes": list(cell.fai_classes),
        "disk_size": cell.vendor.disk_size,
        "arch_facts": fai_arch_facts(cell),
        "build": {
            key: getattr(settings, key)
            for key in ("mirror", "security_mirror", "image_mirror", "image_security_mirror", "hostname")
        },
    }


def fai_environment(cell: Cell, settings: BuildSettings, staging: Path, inputs: BuildInputs) -> dict[str, str]:
    """The variables our config space reads (docs/config-space.md lists them), and what the build takes of ours
    (tasks/system/hostenv.py: never a credential)."""
    env = hostenv.passed()
    env.update(
        LC_ALL="C",
        DEBIAN_FRONTEND="noninteractive",
        IMAGE_RELEASE=cell.release.name,
        IMAGE_ARCH=cell.arch.name,
        # What the base was made with, for FAI's own debootstrap (class/DEBIAN.var)
        # and the build's apt sources (hooks/repository.DEBIAN): written once, in base.py.
        IMAGE_DEBOOTSTRAP_OPTIONS=" ".join(base.DEBOOTSTRAP_OPTIONS),
        IMAGE_BUILD_SOURCES="\n".join(base.build_sources(inputs.config_space, cell.release, settings)),
        **fai_arch_facts(cell),
        IMAGE_VENDOR=cell.vendor.name,
        IMAGE_MIRROR=settings.mirror,
        IMAGE_SECURITY_MIRROR=settings.security_mirror,
        IMAGE_APT_MIRROR=settings.image_mirror,
        IMAGE_APT_SECURITY_MIRROR=settings.image_security_mirror,
        IMAGE_VERSION=inputs.version,
        # The build's time and the disk's identifiers, derived from its inputs (identity.py).
        # Not SOURCE_DATE_EPOCH itself: under it every package's postinst would
        # change behaviour (py_compile writes checked-hash .pyc files, unlike
        # Debian's images); the scripts that need it set it from this.
        IMAGE_SOURCE_DATE_EPOCH=str(identity.source_date_epoch(inputs.version, inputs.base)),
        IMAGE_INITRAMFS_EPOCH=str(identity.initramfs_epoch(inputs.version, inputs.base)),
        **identity.disk_identifiers(cell.name, inputs.version),
        IMAGE_OUTPUT_DIR=str(staging / "output"),
        # The disk image file and the ESP's FAT image (hooks/partition.DEBIAN), and the
        # pinned tools that write them (tasks/system/toolstree.py).
        IMAGE_DISK=str(staging / "disk.raw"),
        IMAGE_DISK_SIZE=cell.vendor.disk_size,
        IMAGE_ESP=str(staging / "esp.img"),
        IMAGE_TOOLS_BIN=str(toolstree.bin_dir(inputs.tools)),
        IMAGE_STEP_CACHE=str(inputs.step_cache or ""),
        IMAGE_TWINS=str(inputs.twins or ""),
        IMAGE_BASEFILE=str(inputs.base.resolve()),
        # The step cache's keys name the base's files untouched since it was unpacked by its digest.
        IMAGE_BASE_SHA256=sha256_kept(inputs.base) if inputs.base.is_file() else "",
        IMAGE_BASE_UNPACKED=str(stepcache.BASE_UNPACKED),
        # The image checks (tasks/stages/imagecheck.py) run with this project's Python.
        IMAGE_PYTHON=str(IN_BUILD_PYTHON),
        IMAGE_TOOLS=str(TOOLS_ROOT),
        # FAI looks for a base file in $NFSROOT/var/tmp, which without an
        # NFS root would be the build host's own /var/tmp.
        NFSROOT="/nonexistent-nfsroot",
        **binfmt.environment(cell.arch.name),
    )
    return env


def check_host() -> None:
    if os.geteuid() != 0:
        raise BuildFailed("building an image needs root (in a container, rootful podman's will do: docs/gitlab-ci.md)")
    for tool, package in (
        ("fai", "fai-client"),
        ("unshare", "util-linux"),
        ("apt-get", "apt"),
    ):
        if not shutil.which(tool):
            raise BuildFailed(f"{tool} not found: install the Debian package {package} (tools/packages names them)")


def build(cell: Cell, files: CellFiles, settings: BuildSettings, inputs: BuildInputs) -> None:
    """Build one image: disk.raw and the build's records (CellFiles.build_records)."""
    check_host()
    binfmt.ensure(cell.arch.name)
    files.dir.mkdir(parents=True, exist_ok=True)
    toolstree.ensure(inputs.tools, settings.mirror)
    staging = files.staging
    atomic.remove(staging)
    try:
        with cpu.slots(inputs.cpu_slots, want=1):
            _build_in(staging, cell, files, settings, inputs)
    finally:
        atomic.remove(staging)


def _build_in(staging: Path, cell: Cell, files: CellFiles, settings: BuildSettings, inputs: BuildInputs) -> None:
    from tasks.system import aptcache  # an HTTP server: imported by the builds only, not by the task graph

    log_dir, output_dir, etc_dir = staging / "fai-logs", staging / "output", staging / "etc"
    for d in (log_dir, output_dir, etc_dir, staging / "memory"):
        d.mkdir(parents=True)
    # FAI reads fai.conf from --cfdir; ours is empty so the host's /etc/fai
    # (LOGUSER, remote log saving) plays no part.
    (etc_dir / "fai.conf").write_text("# fai.conf of an image build: nothing to set\n")
    # The tree, in a tmpfs of the sandbox's own (a directory under it: FAI unmounts every
    # mount whose path contains the tree's).
    memory = staging / "memory"
    raw, tree, esp, log = staging / "disk.raw", memory / "tree", staging / "esp.img", staging / "build.log"
    tools = toolstree.bin_dir(inputs.tools)
    fai_command = [
        str(IN_BUILD_PYTHON),
        "-m",
        "tasks.stages.diskassembly",
        *(str(p) for p in (raw, tree, esp, tools)),
        "--",
        "fai",
        "-C",
        str(etc_dir),
        "-u",
        settings.hostname,
        "-s",
        f"file://{inputs.config_space.resolve()}",
        "-c",
        ",".join(cell.fai_classes),
        "install",
        str(tree),
    ]
    log.write_text(f"# {cell.name}: {' '.join(fai_command)}\n")
    started = datetime.now(UTC)
    clock = time.monotonic()
    phases = PhaseClock()
    try:
        with StageProgress(f"build {cell.name}", total=len(FAI_STEPS), unit="steps") as progress:

            def on_line(line: str) -> None:
                task = phases.line(line)
                if task in FAI_STEPS:
                    what = "disk assembly" if task == "assembly" else f"FAI task {task}"
                    progress.update(completed=FAI_STEPS.index(task), status=what)

            env = fai_environment(cell, settings, staging, inputs)
            env["verbose"] = "1"  # FAI's own switch, as fai-diskimage --verbose sets it
            env["PYTHONPATH"] = str(TOOLS_ROOT)  # for the assembly; FAI's scripts set their own
            keep = [
                staging,
                inputs.config_space,
                inputs.base.parent,
                inputs.tools,
                TOOLS_ROOT,
                IN_BUILD_PYTHON.parents[1],
            ]
            if inputs.step_cache:
                inputs.step_cache.mkdir(parents=True, exist_ok=True)  # bound into the sandbox: it must exist
                keep.append(inputs.step_cache)
            if inputs.twins:
                inputs.twins.mkdir(parents=True, exist_ok=True)
                keep.append(inputs.twins)
            with aptcache.PackageCache(inputs.package_cache) as cache:
                if settings.mirror.startswith("http://"):
                    env["IMAGE_APT_PROXY"] = cache.url
                returncode = sandbox.run_logged(fai_command, log, env, keep, on_line, fai_logs=log_dir, tmpfs=memory)
            phase_seconds = phases.finished()
            with open(log, "a") as out:
                out.write(f"\n# {cache.stats.summary()}\n")
    except KeyboardInterrupt:
        # Keep what the log has, marked as cut short, for whoever investigates.
        with open(log, "a") as out:
            out.write("\n# build interrupted; this log is incomplete\n")
        atomic.commit(log, files.build_log)
        raise
    fai_log_dir = log_dir / settings.hostname / "last"
    _append_fai_logs(log, fai_log_dir)
    outputs = {
        path: output_dir / path.name
        for path in (files.packages, files.facts, files.dpkg_status, files.apt_releases, files.changelogs)
    }
    packages = outputs[files.packages]
    # FAI's exit status does not count its tests: a failed image check is
    # read from its test log.
    failed_checks = [line for line in _read(fai_log_dir / "test.log").splitlines() if "FAILED with" in line]
    if (
        returncode != 0
        or failed_checks
        or not packages.is_file()
        or packages.stat().st_size == 0
        or not all(path.is_file() for path in outputs.values())
    ):
        atomic.commit(log, files.build_log)
        raise BuildFailed(_failure_report(cell, files.build_log, returncode, failed_checks), log=files.build_log)

    info = BuildInfo(
        cell=cell.name,
        release=cell.release.name,
        release_version=cell.release.version,
        vendor=cell.vendor.name,
        arch=cell.arch.name,
        version=inputs.version,
        image_name=cell.image_name(inputs.version),
        fai_classes=list(cell.fai_classes),
        disk_size=cell.vendor.disk_size,
        build_started=started.isoformat(timespec="seconds"),
        build_seconds=round(time.monotonic() - clock, 1),
        phases=phase_seconds,
        builder={
            "id": builder_id(),
            "fai": _package_version("fai-client"),
            "host_kernel": os.uname().release,
            # Whether the builder could mount on its own: false in a container without privileges.
            "privileged": "yes" if userns.privileged() else "no",
        },
        tools=toolstree.versions(inputs.tools),
        mirror=settings.mirror,
        source_date_epoch=int(env["IMAGE_SOURCE_DATE_EPOCH"]),
        settings=build_config(cell, settings),
        inputs={
            "project_commit": project_commit(),
            "config_space_sha256": faiconfig.tree_digest(inputs.config_space),
            # Without the shared base (doit --single), FAI ran debootstrap itself.
            **({"base_sha256": sha256_kept(inputs.base)} if inputs.base.is_file() else {}),
        },
        apt_releases=read_apt_releases(outputs[files.apt_releases]),
        build_finished=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    atomic.write_json(files.build_info, info.to_json())
    for final, made in outputs.items():
        atomic.commit(made, final)
    atomic.commit(log, files.build_log)
    atomic.commit(raw, files.raw)


def read_apt_releases(path: Path) -> list[dict[str, str]]:
    """apt-releases.tsv (scripts/LAST/80-build-records): name, sha256, date per Release file."""
    rows = [line.split("\t") for line in path.read_text().splitlines() if line]
    return [dict(zip(("name", "sha256", "date"), row, strict=True)) for row in rows if len(row) == 3]


def builder_id() -> str:
    """Who built the image, for its provenance: the CI job's URL, else the host."""
    return os.environ.get("CI_JOB_URL") or f"{identity.NAMESPACE_URL}/builders/local/{os.uname().nodename}"


def project_commit() -> str:
    """The git commit of this project that built the image (CI's own when CI builds it)."""
    if os.environ.get("CI_COMMIT_SHA"):
        return os.environ["CI_COMMIT_SHA"]
    try:
        found = subprocess.run(
            ["git", "-C", str(TOOLS_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"  # not a git checkout
    return found.stdout.strip()


def _append_fai_logs(log: Path, fai_log_dir: Path) -> None:
    """Add FAI's own log files (scripts' output, test results) to the build log."""
    with open(log, "a") as out:
        for name in ("format.log", "scripts.log", "test.log", "status.log"):
            path = fai_log_dir / name
            if path.is_file():
                out.write(f"\n===== FAI log {name} =====\n")
                out.write(_read(path))


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.is_file() else ""


def _failure_report(
    cell: Cell, log: Path, returncode: int, failed_checks: Sequence[str] = (), tail: int = 15, matches: int = 25
) -> str:
    lines = log.read_text(errors="replace").splitlines()
    # FAI's own logs, appended to the build log, repeat lines: show each once.
    relevant = list(dict.fromkeys(line for line in lines if _RELEVANT.search(line)))[-matches:]
    if returncode == diskassembly.ASSEMBLY_FAILED:
        parts = [f"{cell.name}: the disk's assembly failed; full log: {log}"]
        return "\n".join(parts + [f"  {line}" for line in lines if line.startswith("ERROR: disk assembly")])
    if returncode:
        what = f"exit status {returncode}"
    elif failed_checks:
        what = f"{len(failed_checks)} image check{'s' if len(failed_checks) > 1 else ''} failed"
    else:
        what = "no package list or facts report written"
    parts = [f"{cell.name}: FAI failed ({what}); full log: {log}"]
    if relevant:
        parts += ["relevant lines:", *(f"  {line}" for line in relevant)]
    parts += [f"last {tail} lines:", *(f"  {line}" for line in lines[-tail:])]
    return "\n".join(parts)


def _package_version(package: str) -> str:
    try:
        return subprocess.run(
            ["dpkg-query", "--show", "--showformat", "${Version}", package],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
