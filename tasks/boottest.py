"""The boot test: boot the image in qemu and read its serial console.

It passes when the boot reaches the configured milestone (systemd showing
itself, or the login prompt), and fails as soon as the console shows why a
boot cannot succeed: a kernel panic, an initramfs that cannot find the root
device or finds no init on it, or systemd's emergency mode. Otherwise it fails at the timeout.
qemu is stopped on every path.
"""

from __future__ import annotations

import dataclasses
import re
import selectors
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import StageFailed
from . import atomic, cpu, proc, qemu
from .layout import CellFiles
from .matrix import BootTestSettings, Cell
from .progress import StageProgress

# Checked in this order: the first that matches names the cause. "Unable to
# mount root" comes with a kernel panic, but the root device is the cause.
FAILURES = [
    ("root-device-not-found", re.compile(
        rb"Gave up waiting for root (file system )?device|ALERT!\s+\S+ does not exist"
        rb"|VFS: Unable to mount root fs|Cannot open root device")),
    # The initramfs mounted the root file system but found no init there.
    ("init-not-found", re.compile(rb"Target filesystem doesn't have requested \S+init")),
    ("kernel-panic", re.compile(rb"Kernel panic - not syncing")),
    ("emergency-mode", re.compile(rb"You are in (emergency|rescue) mode|Entering (emergency|rescue) mode")),
]
MILESTONES = [
    ("kernel", re.compile(rb"Linux version \d")),
    ("systemd", re.compile(rb"systemd\[1\]: |Welcome to .*Debian")),
    ("login", re.compile(rb"(?m)^\S+ login: ")),
]
# A pattern may straddle two reads; search this much of the old text again.
_OVERLAP = 512
# Under KVM the boot loader prints within a second or two; silence this long
# means KVM hangs the guest, and the test starts again under TCG.
KVM_SILENCE_SECONDS = 20
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")


class BootTestFailed(StageFailed):
    pass


@dataclass
class BootResult:
    verdict: str  # "passed" or the cause of failure
    firmware: str  # bios or uefi
    accelerator: str
    accelerator_reason: str
    until: str
    seconds: float
    milestones: dict[str, float] = field(default_factory=dict)
    command: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.verdict == "passed"

    def to_json(self) -> dict:
        data = asdict(self)
        data["passed"] = self.passed
        data["seconds_to_systemd"] = self.milestones.get("systemd")
        return data


def settings_for(cell: Cell, settings: BootTestSettings) -> BootTestSettings:
    """The boot test of a cell: its vendor may wait for another milestone (vendors.<name>.boot_until)."""
    if cell.vendor.boot_until:
        return dataclasses.replace(settings, until=cell.vendor.boot_until)
    return settings


def boot_config(settings: BootTestSettings) -> dict:
    return {"until": settings.until, "timeout": settings.timeout, "memory": settings.memory, "cpus": settings.cpus}


def boot(arch: str, image: Path, log: Path, settings: BootTestSettings, firmware: str = "bios",
         label: str = "boot") -> BootResult:
    """Boot image from firmware, writing its console to log; return the verdict."""
    accel = qemu.choose_accelerator(arch, settings.accelerator)
    result = _boot_once(arch, firmware, image, log, settings, accel, label)
    if result.verdict == "kvm-silent":
        fallback = qemu.Accelerator("tcg", f"fell back to TCG: no console output under KVM for {KVM_SILENCE_SECONDS} s")
        result = _boot_once(arch, firmware, image, log, settings, fallback, label)
    return result


def _boot_once(arch: str, firmware: str, image: Path, log: Path, settings: BootTestSettings,
               accel: qemu.Accelerator, label: str) -> BootResult:
    with tempfile.TemporaryDirectory(prefix="boottest.") as scratch:
        template = qemu.uefi_vars_template(arch, firmware)
        uefi_vars = None
        if template:
            uefi_vars = Path(scratch) / "uefi-vars.fd"
            shutil.copyfile(template, uefi_vars)
        cmd = qemu.boot_command(arch, firmware, image, accel.name, settings.memory, settings.cpus, uefi_vars)
        return _watch(cmd, log, settings, BootResult("timeout", firmware, accel.name, accel.reason, settings.until,
                                                     0.0, command=cmd), label)


def _watch(cmd: list[str], log: Path, settings: BootTestSettings, result: BootResult, label: str) -> BootResult:
    """Run qemu and read its console until a verdict; qemu is stopped on every path."""
    console = bytearray()
    searched = 0
    started = time.monotonic()
    with open(log, "wb") as sink, StageProgress(label, total=settings.timeout, unit="seconds") as progress:
        child = proc.start(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(child.stdout, selectors.EVENT_READ)
                while True:
                    elapsed = time.monotonic() - started
                    if elapsed >= settings.timeout:
                        break
                    if result.accelerator == "kvm" and not console and elapsed >= KVM_SILENCE_SECONDS:
                        result.verdict = "kvm-silent"
                        break
                    progress.update(completed=elapsed, status=_status(result))
                    if not selector.select(timeout=1.0):
                        continue
                    chunk = child.stdout.read1(65536)
                    if not chunk:  # qemu exited
                        result.verdict = _verdict(console) or "qemu-exited"
                        break
                    sink.write(chunk)
                    console += chunk
                    window = bytes(console[max(0, searched - _OVERLAP):])
                    searched = len(console)
                    now = round(time.monotonic() - started, 1)
                    for name, pattern in MILESTONES:
                        if name not in result.milestones and pattern.search(window):
                            result.milestones[name] = now
                    failure = _verdict(window)
                    if failure:
                        result.verdict = failure
                        break
                    if settings.until in result.milestones:
                        result.verdict = "passed"
                        break
        finally:
            proc.stop(child, grace=5)
    result.seconds = round(time.monotonic() - started, 1)
    return result


def _verdict(console: bytes) -> str | None:
    for name, pattern in FAILURES:
        if pattern.search(console):
            return name
    return None


def _status(result: BootResult) -> str:
    reached = ", ".join(f"{name} {t:.0f} s" for name, t in result.milestones.items())
    return f"{result.accelerator}: {reached or 'waiting for the console'}"


def console_tail(log: Path, lines: int = 20) -> list[str]:
    text = _ANSI.sub("", log.read_bytes().decode(errors="replace"))
    return [line for line in text.splitlines() if line.strip()][-lines:]


def explain(result: BootResult, log: Path) -> str:
    reasons = {
        "timeout": f"did not reach {result.until} within the timeout",
        "qemu-exited": "qemu exited before the boot finished",
        "kernel-panic": "the kernel panicked",
        "root-device-not-found": "the initramfs could not find the root device",
        "init-not-found": "the root file system has no init",
        "emergency-mode": "systemd entered emergency mode",
    }
    lines = [f"boot test failed through {result.firmware}: {reasons.get(result.verdict, result.verdict)} "
             f"({result.accelerator}, {result.seconds:.0f} s); console log: {log}",
             "last console lines:", *(f"  {line}" for line in console_tail(log))]
    return "\n".join(lines)


def boot_test(cell: Cell, files: CellFiles, settings: BootTestSettings, cpu_slots: Path) -> list[BootResult]:
    """The doit action: boot through each firmware the image supports.

    Writes boot-<firmware>.log and boottest.json; raises if any boot failed.
    """
    results = []
    with cpu.slots(cpu_slots, want=settings.cpus):
        for firmware in cell.arch.firmware:
            target = files.boot_log(firmware)
            atomic.remove_stale_partials(target)
            partial = atomic.partial_path(target)
            try:
                results.append(boot(cell.arch.name, files.raw, partial, settings, firmware,
                                    label=f"boot {cell.name} ({firmware})"))
                # The log is complete whatever the verdict: it is the evidence.
                atomic.commit(partial, target)
            finally:
                atomic.remove(partial)
            if not results[-1].passed:
                break  # the next firmware's boot would not change the verdict
    failed = next((r for r in results if not r.passed), None)
    atomic.write_json(files.boot_result, {
        "cell": cell.name,
        "verdict": failed.verdict if failed else "passed",
        "passed": failed is None,
        "boots": [r.to_json() for r in results],
    })
    if failed:
        raise BootTestFailed(explain(failed, files.boot_log(failed.firmware)))
    return results
