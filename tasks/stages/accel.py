"""KVM or TCG for a boot, decided by the boot itself, and remembered per host.

/dev/kvm can exist and still fail, differently from host to host of the
same kind: qemu asserts at once; OVMF stops with an "emulation failure"
register dump and the VM pauses; SeaBIOS and the kernel stay silent. A tiny
probe guest can pass where a real firmware fails, so nothing short of a real
boot under the real firmware shows that KVM works. Each boot under KVM is
therefore watched (kvm_failure): at the first sign of a failing KVM it is
stopped and started again under TCG, seconds in rather than at the boot
test's timeout.

The verdict is kept per (architecture, firmware) in a small file of the work
directory (Verdicts), tied to what decides it: this boot of the host (its
boot id, so a reboot with other KVM settings starts afresh), its kernel, the
qemu binary and the firmware file. Later boots of a run, and of later runs,
on a host where KVM failed go straight to TCG; where KVM worked they keep
watching, so a host that changes its mind still falls back.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tasks.errors import StageFailed
from tasks.model.arch import Accelerator

# Under KVM the firmware or the boot loader writes to the console within a
# second or two of qemu starting (this host kind takes up to 4 s just to set
# up a KVM guest); this much silence means KVM hangs the guest.
FIRST_OUTPUT_SECONDS = 8.0
# Between the firmware's first output and the kernel's, the console of a
# working KVM guest is never still this long (GRUB's countdown prints every
# second): a longer silence means the VM stopped.
STALL_SECONDS = 8.0
# What qemu prints when KVM fails (the register dump follows the first two).
_KVM_ERRORS = re.compile(
    rb"KVM internal error[^\r\n]*|emulation failure|KVM: entry failed[^\r\n]*|kvm run failed[^\r\n]*"
    rb"|qemu-system-\w+: [^\r\n]*(?:[Aa]ssertion|kvm|KVM)[^\r\n]*"
)


KVM, TCG = Accelerator.KVM, Accelerator.TCG


class AcceleratorUnusable(StageFailed):
    pass


@dataclass(frozen=True)
class Choice:
    name: str  # kvm or tcg
    reason: str  # why, in words a user reads in boottest.json and the progress line
    fallback: bool = False  # under KVM: a failing KVM restarts the boot under TCG (else: an error)

    @property
    def kvm(self) -> bool:
        return self.name == KVM


def kvm_failure(
    new_output: bytes, any_output: bool, elapsed: float, quiet_for: float, kernel_started: bool, exited: bool
) -> str | None:
    """Why a boot under KVM shows that KVM fails here, or None.

    new_output: qemu's output (the serial console and qemu's own messages)
    not looked at before; any_output: whether there was any so far;
    quiet_for: seconds since the output last grew.
    """
    error = _KVM_ERRORS.search(new_output)
    if error:
        return f"qemu reported {error.group(0).decode(errors='replace').strip()!r}"
    if kernel_started:
        return None  # firmware, boot loader and the kernel's start all ran under KVM
    if exited:
        return "qemu exited under KVM before the kernel started"
    if not any_output and elapsed >= FIRST_OUTPUT_SECONDS:
        return f"no console output under KVM within {FIRST_OUTPUT_SECONDS:.0f} s"
    if any_output and quiet_for >= STALL_SECONDS:
        return f"the console went silent under KVM for {STALL_SECONDS:.0f} s before the kernel started"
    return None


def kvm_unavailable(arch: str, qemu_binary: str) -> str | None:
    """Why KVM cannot even be tried for arch here, or None."""
    if arch != "amd64" or os.uname().machine != "x86_64":
        return f"no KVM for {arch} guests on a {os.uname().machine} host"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "/dev/kvm is missing or not accessible"
    if not shutil.which(qemu_binary):
        return f"{qemu_binary} not found"
    return None


class Verdicts:
    """Whether KVM worked for a (architecture, firmware) on this host: a JSON file."""

    def __init__(self, path: Path | None):
        self.path = path

    @staticmethod
    def host_identity(qemu_binary: str, firmware_file: str) -> str:
        parts = [Path("/proc/sys/kernel/random/boot_id").read_text().strip(), os.uname().release]
        for name in (shutil.which(qemu_binary), firmware_file):
            if name and Path(name).exists():
                st = Path(name).stat()
                parts.append(f"{name}:{st.st_size}:{st.st_mtime_ns}")
        return "|".join(parts)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict]:
        """The verdicts, read and (when changed) written under an exclusive lock."""
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                data = json.loads(self.path.read_text())
            except (OSError, ValueError):
                data = {}
            before = json.dumps(data, sort_keys=True)
            yield data
            if json.dumps(data, sort_keys=True) != before:
                partial = self.path.with_name(f".{self.path.name}.{os.getpid()}.partial")
                partial.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
                os.replace(partial, self.path)

    def get(self, key: str, identity: str) -> dict | None:
        if self.path is None:
            return None
        with self._locked() as data:
            entry = data.get(key)
        return entry if entry and entry.get("host") == identity else None

    def put(self, key: str, identity: str, works: bool, reason: str) -> None:
        if self.path is None:
            return
        with self._locked() as data:
            data[key] = {
                "host": identity,
                "kvm_works": works,
                "reason": reason,
                "seen": datetime.now(UTC).isoformat(timespec="seconds"),
            }


def choose(arch: str, firmware: str, wanted: str, qemu_binary: str, firmware_file: str, verdicts: Verdicts) -> Choice:
    """The accelerator a boot starts under. wanted: auto, kvm or tcg (boot_test.accelerator)."""
    if wanted == TCG:
        return Choice(TCG, "asked for TCG")
    why_not = kvm_unavailable(arch, qemu_binary)
    if why_not:
        if wanted == KVM:
            raise AcceleratorUnusable(
                f"boot_test.accelerator is kvm, but {why_not}; set boot_test.accelerator to auto or tcg in the matrix"
            )
        return Choice(TCG, f"TCG: {why_not}")
    known = verdicts.get(f"{arch}/{firmware}", Verdicts.host_identity(qemu_binary, firmware_file))
    if known and not known["kvm_works"]:
        if wanted == KVM:
            raise unusable(arch, firmware, f"{known['reason']} (seen {known['seen']})")
        return Choice(TCG, f"TCG: KVM failed for {arch} {firmware} boots on this host before ({known['reason']})")
    if known:
        return Choice(KVM, f"KVM: it worked for {arch} {firmware} boots on this host", fallback=wanted != KVM)
    return Choice(KVM, f"KVM on trial for {arch} {firmware} boots (TCG if it fails)", fallback=wanted != KVM)


def unusable(arch: str, firmware: str, reason: str) -> AcceleratorUnusable:
    return AcceleratorUnusable(
        f"boot_test.accelerator is kvm, but KVM fails here for {arch} {firmware} boots: "
        f"{reason}; set boot_test.accelerator to auto (TCG where KVM fails) or tcg"
    )


def record(
    arch: str, firmware: str, qemu_binary: str, firmware_file: str, verdicts: Verdicts, works: bool, reason: str
) -> None:
    verdicts.put(f"{arch}/{firmware}", Verdicts.host_identity(qemu_binary, firmware_file), works, reason)
