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

Inside a container neither can be done, nor the host's entries seen: there
the builder runs a tiny program of the architecture (PROBES) and relies on
the host's registration when it runs; the host must have registered qemu with
the F flag (docs/gitlab-ci.md, "Build runners without privileges").
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tasks.errors import StageFailed
from tasks.model.arch import Arch
from tasks.system import proc, userns

BINFMT = Path("/proc/sys/fs/binfmt_misc")
# Where the host's release declares qemu's entries: Debian 12's qemu-user-static as formats of
# binfmt-support (update-binfmts enables them), Debian 13's as systemd's binfmt.d lines
# (systemd-binfmt writes them to the register file at boot; here, when it did not).
BINFMT_SUPPORT_FORMATS = Path("/usr/share/binfmts")
BINFMT_D = Path("/usr/lib/binfmt.d")
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


# The smallest program of each architecture: exit(0), as a static ELF of one segment
# (the ELF header, one program header, then the code, loaded at 0x400000).
_EXIT_CODE = {
    "aarch64": (183, bytes.fromhex("000080d2a80b80d2010000d4")),  # mov x0, 0; mov x8, 93; svc 0
    "x86_64": (62, bytes.fromhex("bf00000000b83c0000000f05")),  # mov edi, 0; mov eax, 60; syscall
}


def probe_program(uname: str) -> bytes:
    machine, code = _EXIT_CODE[uname]
    base, headers = 0x400000, 64 + 56
    # fmt: off
    elf_header = struct.pack(
        "<4sBBBBB7xHHIQQQIHHHHHH",
        b"\x7fELF", 2, 1, 1, 0, 0,  # 64-bit, little-endian, ELF version 1, System V ABI
        2, machine, 1,  # an executable for `machine`, version 1
        base + headers, 64, 0,  # entry point (the code), program headers right after this one, no sections
        0, 64, 56, 1, 0, 0, 0,  # flags, this header's size, one program header of 56 bytes
    )
    segment = struct.pack(
        "<IIQQQQQQ",
        1, 5, 0, base, base,  # PT_LOAD, readable and executable, the whole file at `base`
        headers + len(code), headers + len(code), 0x1000,
    )
    # fmt: on
    return elf_header + segment + code


def runs_here(arch: str) -> bool:
    """Whether a program of arch runs here (through whatever binfmt_misc entry the kernel applies)."""
    with tempfile.TemporaryDirectory(prefix="binfmt-probe-") as scratch:
        program = Path(scratch) / "exit0"
        program.write_bytes(probe_program(Arch.named(arch).spec.uname))
        program.chmod(0o755)
        try:
            return subprocess.run([str(program)], capture_output=True, timeout=30).returncode == 0
        except OSError:
            return False


def ensure(arch: str) -> None:
    """Make sure programs of arch can run here; mount and register as needed."""
    if not is_foreign(arch):
        return
    qemu_name = Arch.named(arch).spec.qemu_user
    entry = BINFMT / f"qemu-{qemu_name}"
    if not (BINFMT / "register").exists() and not userns.privileged():
        # A container: the host's entries are not to be seen, only used.
        if runs_here(arch):
            return
        raise ForeignArchUnavailable(
            f"cannot run {arch} programs in this container: the host must register qemu-{qemu_name} in "
            "binfmt_misc with the F flag (on the host: apt-get install qemu-user-static binfmt-support)"
        )
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
                    _register(f"qemu-{qemu_name}")
                except (proc.CommandFailed, OSError):
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
            "reinstall qemu-user-static, or register it: update-binfmts --enable qemu-"
            + qemu_name
            + " (Debian 12), systemctl restart systemd-binfmt (Debian 13)"
        )


def _register(name: str) -> None:
    """Register the entry the host's release declares for name (see BINFMT_SUPPORT_FORMATS)."""
    if (BINFMT_SUPPORT_FORMATS / name).exists():
        proc.run(["update-binfmts", "--enable", name])
        return
    declared = BINFMT_D / f"{name}.conf"
    lines = [line for line in declared.read_text().splitlines() if line.startswith(":")] if declared.exists() else []
    if not lines:
        raise OSError(f"neither {BINFMT_SUPPORT_FORMATS / name} nor {declared} declares {name}")
    (BINFMT / "register").write_text(lines[0])
