"""The build stage: fai-diskimage over our config space, inside a sandbox.

fai-diskimage runs in private mount and PID namespaces (unshare). Inside,
FAI's host-global state (/run/fai with its "installation in progress" stamp,
/var/log/fai, /tmp where the image is mounted) is private to the build, so
builds can run side by side. When the build ends, however it ends, the
namespaces die: every process of the build is killed and every file system it
mounted is released by the kernel. Loop devices are global, so they are
detached afterwards by backing file (tasks/loopdev.py).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

from .errors import StageFailed
from . import atomic, loopdev, proc
from .layout import CellFiles
from .matrix import BuildSettings, Cell
from .progress import StageProgress

# Bump when a change to the builder (not to the config space or matrix.yaml)
# must rebuild every image.
BUILDER_FORMAT = 1

# Runs as PID 1 of the build's namespaces; "$@" is the fai-diskimage command.
# /tmp becomes a private tmpfs (fai-diskimage mounts the image under it);
# the builder's own directories that lie under /tmp (IMAGE_KEEP, one per
# line) are bound back into it from the host's /tmp.
_SANDBOX = r"""
set -eu
mkdir -p /run/fai /run/udev /var/log/fai
mount -t tmpfs -o mode=0755 image-build-run /run/fai
mkdir /run/fai/.host-tmp
mount --bind /tmp /run/fai/.host-tmp
mount -t tmpfs -o mode=1777 image-build-tmp /tmp
printf '%s\n' "$IMAGE_KEEP" | while IFS= read -r keep; do
    case $keep in
        /tmp/*) mkdir -p "$keep"; mount --bind "/run/fai/.host-tmp/${keep#/tmp/}" "$keep" ;;
    esac
done
mount --bind "$IMAGE_FAI_LOGS" /var/log/fai
"$@"
"""

# FAI tasks of an installation, in order: the build's progress steps.
FAI_STEPS = [
    "partition", "mountdisks", "extrbase", "debconf", "repository", "updatebase",
    "instsoft", "configure", "tests", "finish", "chboot", "faiend",
]
_STEP_LINE = re.compile(r"^Calling task_(\w+)")
# Lines worth showing when a build fails.
_RELEVANT = re.compile(
    r"^E: |ERROR|FAILED|Error in task|error processing|returned an error|Traceback|"
    r"No such file|not found|cannot |Unable to|Failed to|No space left"
)


class BuildFailed(StageFailed):
    pass


def build_config(cell: Cell, settings: BuildSettings) -> dict:
    """Everything, besides the config-space files, that decides the image's content."""
    return {
        "builder_format": BUILDER_FORMAT,
        "release": cell.release.name,
        "arch": cell.arch.name,
        "vendor": cell.vendor.name,
        "fai_classes": list(cell.fai_classes),
        "disk_size": cell.vendor.disk_size,
        "build": vars(settings),
    }


def fai_environment(cell: Cell, settings: BuildSettings, staging: Path, config_space: Path) -> dict[str, str]:
    """The variables our config space reads (README.md lists them)."""
    env = {k: v for k, v in os.environ.items() if k not in ("TMPDIR", "PYTHONPATH", "VIRTUAL_ENV")}
    env.update(
        LC_ALL="C",
        DEBIAN_FRONTEND="noninteractive",
        IMAGE_RELEASE=cell.release.name,
        IMAGE_ARCH=cell.arch.name,
        IMAGE_VENDOR=cell.vendor.name,
        IMAGE_MIRROR=settings.mirror,
        IMAGE_SECURITY_MIRROR=settings.security_mirror,
        IMAGE_APT_MIRROR=settings.image_mirror,
        IMAGE_APT_SECURITY_MIRROR=settings.image_security_mirror,
        IMAGE_OUTPUT_DIR=str(staging / "output"),
        # for the sandbox script
        IMAGE_FAI_LOGS=str(staging / "fai-logs"),
        IMAGE_KEEP="\n".join(str(p.resolve()) for p in (staging, config_space)),
    )
    return env


def check_host() -> None:
    if os.geteuid() != 0:
        raise BuildFailed("building an image needs root (loop devices, mounts, chroot)")
    for tool, package in (("fai-diskimage", "fai-server"), ("setup-storage", "fai-setup-storage"),
                          ("qemu-img", "qemu-utils"), ("unshare", "util-linux")):
        if not shutil.which(tool):
            raise BuildFailed(f"{tool} not found: install the Debian package {package} (README.md, set-up)")


def build(cell: Cell, files: CellFiles, settings: BuildSettings, config_space: Path, version: str) -> None:
    """Build one image: disk.raw, build.log, packages.tsv and build-info.json."""
    check_host()
    files.dir.mkdir(parents=True, exist_ok=True)
    # A build killed outright (SIGKILL) may have left its loop device behind.
    loopdev.detach_all(files.dir)
    staging = files.staging
    atomic.remove(staging)
    try:
        _build_in(staging, cell, files, settings, config_space, version)
    finally:
        # However the build ended, nothing of it may stay attached or mounted.
        loopdev.detach_all(staging)
        atomic.remove(staging)


def _build_in(staging: Path, cell: Cell, files: CellFiles, settings: BuildSettings, config_space: Path,
              version: str) -> None:
    log_dir, output_dir, etc_dir = staging / "fai-logs", staging / "output", staging / "etc"
    for d in (log_dir, output_dir, etc_dir):
        d.mkdir(parents=True)
    # FAI reads fai.conf from --cfdir; ours is empty so the host's /etc/fai
    # (LOGUSER, remote log saving) plays no part.
    (etc_dir / "fai.conf").write_text("# fai.conf of an image build: nothing to set\n")
    raw, log = staging / "disk.raw", staging / "build.log"
    fai_command = [
        "fai-diskimage", "--verbose",
        "--hostname", settings.hostname,
        "--size", cell.vendor.disk_size,
        "--cspace", str(config_space.resolve()),
        "--cfdir", str(etc_dir),
        "--class", ",".join(cell.fai_classes),
        str(raw),
    ]
    sandbox = ["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child",
               "--mount-proc", "bash", "-c", _SANDBOX, "image-build-sandbox"]
    log.write_text(f"# {cell.name}: {' '.join(fai_command)}\n")
    started = datetime.now(timezone.utc)
    clock = time.monotonic()
    try:
        with StageProgress(f"build {cell.name}", total=len(FAI_STEPS), unit="steps") as progress:

            def on_line(line: str) -> None:
                step = _STEP_LINE.match(line)
                if step and step.group(1) in FAI_STEPS:
                    progress.update(completed=FAI_STEPS.index(step.group(1)), status=f"FAI task {step.group(1)}")

            env = fai_environment(cell, settings, staging, config_space)
            returncode = proc.run_logged(sandbox + fai_command, log, on_line, env=env)
    except KeyboardInterrupt:
        # Keep what the log has, marked as cut short, for whoever investigates.
        with open(log, "a") as out:
            out.write("\n# build interrupted; this log is incomplete\n")
        atomic.commit(log, files.build_log)
        raise
    loopdev.detach_all(staging)
    _append_fai_logs(log, log_dir / settings.hostname / "last")
    packages = output_dir / "packages.tsv"
    if returncode != 0 or not packages.is_file() or packages.stat().st_size == 0:
        atomic.commit(log, files.build_log)
        raise BuildFailed(_failure_report(cell, files.build_log, returncode))

    atomic.write_json(files.build_info, {
        "cell": cell.name,
        "release": cell.release.name,
        "release_version": cell.release.version,
        "vendor": cell.vendor.name,
        "arch": cell.arch.name,
        "version": version,
        "image_name": cell.image_name(version),
        "fai_classes": list(cell.fai_classes),
        "disk_size": cell.vendor.disk_size,
        "build_started": started.isoformat(timespec="seconds"),
        "build_seconds": round(time.monotonic() - clock, 1),
        "builder": {"fai": _package_version("fai-server"), "host_kernel": os.uname().release},
        "mirror": settings.mirror,
    })
    atomic.commit(packages, files.packages)
    atomic.commit(log, files.build_log)
    atomic.commit(raw, files.raw)


def _append_fai_logs(log: Path, fai_log_dir: Path) -> None:
    """Add FAI's own log files (scripts' output, test results) to the build log."""
    with open(log, "a") as out:
        for name in ("format.log", "scripts.log", "test.log", "status.log"):
            path = fai_log_dir / name
            if path.is_file():
                out.write(f"\n===== FAI log {name} =====\n")
                out.write(path.read_text(errors="replace"))


def _failure_report(cell: Cell, log: Path, returncode: int, tail: int = 15, matches: int = 25) -> str:
    lines = log.read_text(errors="replace").splitlines()
    relevant = [line for line in lines if _RELEVANT.search(line)][-matches:]
    what = f"exit status {returncode}" if returncode else "no package list written"
    parts = [f"{cell.name}: fai-diskimage failed ({what}); full log: {log}"]
    if relevant:
        parts += ["relevant lines:", *(f"  {line}" for line in relevant)]
    parts += [f"last {tail} lines:", *(f"  {line}" for line in lines[-tail:])]
    return "\n".join(parts)


def _package_version(package: str) -> str:
    try:
        return subprocess.run(
            ["dpkg-query", "--show", "--showformat", "${Version}", package],
            capture_output=True, text=True, check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
