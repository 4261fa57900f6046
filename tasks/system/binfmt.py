"""Running another architecture's programs: binfmt_misc and qemu-user-static.

An arm64 image is built on an amd64 host by running its programs (dpkg,
maintainer scripts, update-initramfs) through qemu-user-static. The kernel
hands them to qemu when binfmt_misc has a qemu-aarch64 entry; with its F
flag the interpreter is opened once at registration, so the chroot does not
need a copy of it.
"""

from __future__ import annotations

import os
from pathlib import Path

from tasks.errors import StageFailed
from tasks.model.arch import Arch
from tasks.system import proc

BINFMT = Path("/proc/sys/fs/binfmt_misc")


class ForeignArchUnavailable(StageFailed):
    pass


def is_foreign(arch: str) -> bool:
    return Arch.named(arch).spec.uname != os.uname().machine


def environment(arch: str) -> dict[str, str]:
    """What a foreign build's environment tells qemu-user: the CPU it emulates (tasks/model/arch.py)."""
    cpu = Arch.named(arch).spec.user_cpu
    return {"QEMU_CPU": cpu} if cpu and is_foreign(arch) else {}


def ensure(arch: str) -> None:
    """Make sure programs of arch can run here; mount and register as needed."""
    if not is_foreign(arch):
        return
    qemu_name = Arch.named(arch).spec.qemu_user
    entry = BINFMT / f"qemu-{qemu_name}"
    try:
        if not (BINFMT / "register").exists():
            proc.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)])
        if not entry.exists():
            proc.run(["update-binfmts", "--enable", f"qemu-{qemu_name}"])
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
