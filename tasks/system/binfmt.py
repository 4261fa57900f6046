"""Running another architecture's programs: binfmt_misc and qemu-user-static.

An arm64 image is built on an amd64 host by running its programs (dpkg,
maintainer scripts, update-initramfs) through qemu-user-static. The kernel
hands them to qemu when binfmt_misc has a qemu-aarch64 entry; with its F
flag the interpreter is opened once at registration, so the chroot does not
need a copy of it.

Mounting binfmt_misc and registering the entry is host-wide set-up, which the
workers of one run (or of two runs) may all find missing at once: it is done
under a lock of the host's (HOST_LOCK), and what failed because another did
it first is taken as done when it is.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tasks.errors import StageFailed
from tasks.model.arch import Arch
from tasks.system import proc

BINFMT = Path("/proc/sys/fs/binfmt_misc")
HOST_LOCK = (Path("/run/lock") if Path("/run/lock").is_dir() else Path(tempfile.gettempdir())) / "image-binfmt.lock"


class ForeignArchUnavailable(StageFailed):
    pass


def is_foreign(arch: str) -> bool:
    return Arch.named(arch).spec.uname != os.uname().machine


def environment(arch: str) -> dict[str, str]:
    """What a foreign build's environment tells qemu-user: the CPU it emulates (tasks/model/arch.py)."""
    cpu = Arch.named(arch).spec.user_cpu
    return {"QEMU_CPU": cpu} if cpu and is_foreign(arch) else {}


@contextlib.contextmanager
def _host_lock() -> Iterator[None]:
    fd = os.open(HOST_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _enabled(entry: Path) -> bool:
    return entry.exists() and entry.read_text().startswith("enabled")


def ensure(arch: str) -> None:
    """Make sure programs of arch can run here; mount and register as needed."""
    if not is_foreign(arch):
        return
    qemu_name = Arch.named(arch).spec.qemu_user
    entry = BINFMT / f"qemu-{qemu_name}"
    try:
        with _host_lock():
            if not (BINFMT / "register").exists():
                try:
                    proc.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)])
                except proc.CommandFailed:
                    if not (BINFMT / "register").exists():  # not mounted by another meanwhile
                        raise
            if entry.exists() and not _enabled(entry):
                entry.write_text("1")  # registered, then disabled: update-binfmts would leave it so
            if not entry.exists():
                try:
                    proc.run(["update-binfmts", "--enable", f"qemu-{qemu_name}"])
                except proc.CommandFailed:
                    if not _enabled(entry):  # not registered by another meanwhile
                        raise
    except (proc.CommandFailed, OSError) as error:
        raise ForeignArchUnavailable(
            f"cannot run {arch} programs here: {error} "
            f"(needs binfmt_misc and the packages qemu-user-static, binfmt-support)"
        ) from None
    text = entry.read_text() if entry.exists() else ""
    if "enabled" not in text.splitlines()[:1] or not any(
        line.startswith("flags:") and "F" in line for line in text.splitlines()
    ):
        raise ForeignArchUnavailable(
            f"{entry} is not an enabled entry with the F flag:\n{text.strip()}\n"
            "reinstall qemu-user-static, or run: update-binfmts --enable qemu-" + qemu_name
        )
