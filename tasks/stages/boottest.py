"""The boot test: boot the image in qemu and read its serial console.

It passes when the boot reaches the configured milestone (systemd showing
itself, or the login prompt), and fails as soon as the console shows why a
boot cannot succeed: a kernel panic, an initramfs that cannot find the root
device or finds no init on it, or systemd's emergency mode. Otherwise it fails at the timeout.
qemu is stopped on every path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import re
import selectors
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tasks.errors import StageFailed
from tasks.model.layout import CellFiles
from tasks.model.matrix import BootTestSettings, Cell
from tasks.model.records import BootRecord
from tasks.progress import StageProgress
from tasks.stages import accel, qemu
from tasks.system import atomic, cpu, proc


@dataclass(frozen=True)
class Verdict:
    """How a boot ended: its name in records, what it means, and the console text that shows it."""

    name: str
    meaning: str
    console: re.Pattern | None = None  # None: not read from the console


PASSED = Verdict("passed", "the boot reached its milestone")
TIMEOUT = Verdict("timeout", "did not reach {until} within the timeout")
QEMU_EXITED = Verdict("qemu-exited", "qemu exited before the boot finished")
# Checked in this order: the first that matches names the cause. "Unable to
# mount root" comes with a kernel panic, but the root device is the cause.
FAILURES = (
    Verdict(
        "root-device-not-found",
        "the initramfs could not find the root device",
        re.compile(
            rb"Gave up waiting for root (file system )?device|ALERT!\s+\S+ does not exist"
            rb"|VFS: Unable to mount root fs|Cannot open root device"
        ),
    ),
    # The initramfs mounted the root file system but found no init there.
    Verdict(
        "init-not-found",
        "the root file system has no init",
        re.compile(rb"Target filesystem doesn't have requested \S+init"),
    ),
    Verdict("kernel-panic", "the kernel panicked", re.compile(rb"Kernel panic - not syncing")),
    Verdict(
        "emergency-mode",
        "systemd entered emergency mode",
        re.compile(rb"You are in (emergency|rescue) mode|Entering (emergency|rescue) mode"),
    ),
)
# Verdicts that are not the image's: KVM failed (the boot starts again under
# TCG), or another firmware's boot already failed the stage.
KVM_FAILED = Verdict("kvm-failed", "KVM failed; the boot starts again under TCG")
CANCELLED = Verdict("cancelled", "another boot of the image failed first")
VERDICTS = {v.name: v for v in (PASSED, TIMEOUT, QEMU_EXITED, *FAILURES, KVM_FAILED, CANCELLED)}
# Where a boot's time goes (the milestones a boot test may wait for,
# tasks/model/arch.Milestone, are among them): the firmware hands over to GRUB, GRUB to the
# kernel, the kernel to the initramfs, the initramfs to systemd on the root
# file system, systemd to the login prompt.
PHASES = [
    ("grub", re.compile(rb"GNU GRUB|Welcome to GRUB")),
    ("kernel", re.compile(rb"Linux version \d")),
    ("initramfs", re.compile(rb"Run /init as init process")),
    ("systemd", re.compile(rb"systemd\[1\]: |Welcome to .*Debian")),
    ("login", re.compile(rb"(?m)^\S+ login: ")),
]
# GRUB's menu on the serial console: Enter boots the default entry at once
# instead of after the menu's timeout.
GRUB_MENU = re.compile(rb"Press enter to boot the selected OS|will be executed automatically in")
# A boot takes up to this many vCPUs when CPU slots are free beyond
# boot_test.cpus: under TCG, a second vCPU takes a boot from systemd to the
# login prompt in half the time (measured: 19 s instead of 40 s).
VCPUS_WHEN_FREE = 2
# A pattern may straddle two reads; search this much of the old text again.
_OVERLAP = 512
# How often the console, the clock and the other boots are looked at.
_POLL_SECONDS = 0.25
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")


class BootTestFailed(StageFailed):
    pass


@dataclass
class BootResult:
    verdict: str  # a Verdict's name: passed, or the cause of failure
    firmware: str  # bios or uefi
    accelerator: str
    accelerator_reason: str
    until: str
    seconds: float
    milestones: dict[str, float] = field(default_factory=dict)
    command: list[str] = field(default_factory=list)
    vcpus: int = 1
    # A first boot under KVM that showed KVM failing: its seconds and why.
    kvm_attempt: dict | None = None

    @property
    def passed(self) -> bool:
        return self.verdict == PASSED.name

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


def boot(
    arch: str,
    image: Path,
    log: Path,
    settings: BootTestSettings,
    firmware: str = "bios",
    label: str = "boot",
    verdicts: accel.Verdicts | None = None,
    cancel: threading.Event | None = None,
) -> BootResult:
    """Boot image from firmware, writing its console to log; return the verdict.

    Under KVM the boot is watched (tasks/stages/accel.py): if KVM fails, the boot
    starts again under TCG at once, and the verdict is remembered in
    verdicts. cancel, once set, stops the boot (verdict "cancelled").
    """
    verdicts = verdicts or accel.Verdicts(None)
    choice = qemu.choose_accelerator(arch, firmware, settings.accelerator, verdicts)
    result = _boot_once(arch, firmware, image, log, settings, choice, label, cancel)
    if result.verdict == KVM_FAILED.name:
        failure = result.accelerator_reason
        qemu.record_kvm_verdict(arch, firmware, verdicts, works=False, reason=failure)
        if not choice.fallback:
            raise accel.unusable(arch, firmware, failure)
        attempt = {"accelerator": accel.KVM, "seconds": result.seconds, "failure": failure}
        fallback = accel.Choice(accel.TCG, f"TCG: KVM failed after {result.seconds:.1f} s ({failure})")
        result = _boot_once(arch, firmware, image, log, settings, fallback, label, cancel, append=True)
        result.kvm_attempt = attempt
    elif choice.kvm and result.passed:
        qemu.record_kvm_verdict(arch, firmware, verdicts, works=True, reason=f"a boot reached {result.until}")
    return result


def _boot_once(
    arch: str,
    firmware: str,
    image: Path,
    log: Path,
    settings: BootTestSettings,
    choice: accel.Choice,
    label: str,
    cancel: threading.Event | None,
    append: bool = False,
) -> BootResult:
    with tempfile.TemporaryDirectory(prefix="boottest.") as scratch:
        template = qemu.uefi_vars_template(arch, firmware)
        uefi_vars = None
        if template:
            uefi_vars = Path(scratch) / "uefi-vars.fd"
            shutil.copyfile(template, uefi_vars)
        cmd = qemu.boot_command(arch, firmware, image, choice.name, settings.memory, settings.cpus, uefi_vars)
        result = BootResult(
            TIMEOUT.name, firmware, choice.name, choice.reason, settings.until, 0.0, command=cmd, vcpus=settings.cpus
        )
        return _watch(cmd, log, settings, result, choice, label, cancel, append)


def _watch(
    cmd: list[str],
    log: Path,
    settings: BootTestSettings,
    result: BootResult,
    choice: accel.Choice,
    label: str,
    cancel: threading.Event | None,
    append: bool,
) -> BootResult:
    """Run qemu and read its console until a verdict; qemu is stopped on every path."""
    console = bytearray()
    searched = 0
    started = last_output = time.monotonic()
    with (
        open(log, "ab" if append else "wb") as sink,
        StageProgress(label, total=settings.timeout, unit="seconds") as progress,
    ):
        if append:
            sink.write(f"\n----- {result.accelerator_reason}: the boot starts again -----\n".encode())
        # The console's input is ours: it passes GRUB's menu.
        child = proc.start(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.PIPE)
        assert isinstance(child.stdout, io.BufferedReader) and child.stdin is not None  # both PIPE, binary
        menu_passed = False
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(child.stdout, selectors.EVENT_READ)
                while True:
                    now = time.monotonic()
                    elapsed = now - started
                    if elapsed >= settings.timeout:
                        break
                    if cancel is not None and cancel.is_set():
                        result.verdict = CANCELLED.name
                        break
                    window, exited = b"", False
                    if selector.select(timeout=_POLL_SECONDS):
                        chunk = child.stdout.read1(65536)
                        exited = not chunk
                        if chunk:
                            sink.write(chunk)
                            console += chunk
                            last_output = now
                            window = bytes(console[max(0, searched - _OVERLAP) :])
                            searched = len(console)
                    if choice.kvm:
                        failure = accel.kvm_failure(
                            window, bool(console), elapsed, now - last_output, "kernel" in result.milestones, exited
                        )
                        if failure:
                            result.verdict, result.accelerator_reason = KVM_FAILED.name, failure
                            break
                    if exited:
                        result.verdict = _verdict(console) or QEMU_EXITED.name
                        break
                    if window and not menu_passed and "kernel" not in result.milestones and GRUB_MENU.search(window):
                        menu_passed = _send(child, b"\r")
                    if window:
                        for name, pattern in PHASES:
                            if name not in result.milestones and pattern.search(window):
                                result.milestones[name] = round(now - started, 1)
                        failure = _verdict(window)
                        if failure:
                            result.verdict = failure
                            break
                        if settings.until in result.milestones:
                            result.verdict = PASSED.name
                            break
                    progress.update(completed=elapsed, status=_status(result))
        finally:
            proc.stop(child, grace=5)
            with contextlib.suppress(OSError):
                child.stdin.close()
    result.seconds = round(time.monotonic() - started, 1)
    return result


def _send(child: subprocess.Popen, keys: bytes) -> bool:
    """Type keys on the serial console; False if qemu no longer reads them."""
    if child.stdin is None:
        return False
    try:
        child.stdin.write(keys)
        child.stdin.flush()
    except (BrokenPipeError, OSError):
        return False
    return True


def _verdict(console: bytes | bytearray) -> str | None:
    return next((v.name for v in FAILURES if v.console and v.console.search(console)), None)


def _status(result: BootResult) -> str:
    """The progress line: the accelerator and why, then the milestones reached."""
    reached = ", ".join(f"{name} {t:.0f} s" for name, t in result.milestones.items())
    return f"{result.accelerator_reason} | {reached or 'waiting for the console'}"


def console_tail(log: Path, lines: int = 20) -> list[str]:
    text = _ANSI.sub("", log.read_bytes().decode(errors="replace"))
    return [line for line in text.splitlines() if line.strip()][-lines:]


def explain(result: BootResult, log: Path) -> str:
    known = VERDICTS.get(result.verdict)
    reason = known.meaning.format(until=result.until) if known else result.verdict
    lines = [
        f"boot test failed through {result.firmware}: {reason} "
        f"({result.accelerator}, {result.seconds:.0f} s); console log: {log}",
        "last console lines:",
        *(f"  {line}" for line in console_tail(log)),
    ]
    return "\n".join(lines)


def boot_test(
    cell: Cell, files: CellFiles, settings: BootTestSettings, cpu_slots: Path, kvm_verdicts: Path | None = None
) -> list[BootResult]:
    """The doit action: boot through each firmware the image supports.

    Each boot takes its CPU slots as it starts (settings.cpus of them, up to
    VCPUS_WHEN_FREE when the boots after it find theirs too), so the firmwares
    boot side by side when slots allow, and a boot that had to wait starts as
    soon as a slot frees, whoever frees it. The first failure stops the others at
    once. Writes boot-<firmware>.log and boottest.json; raises if any boot failed.
    """
    verdicts = accel.Verdicts(kvm_verdicts)
    results, side_by_side = _boot_each(cell, files, settings, verdicts, list(cell.arch.firmware), cpu_slots)
    failed = next((r for r in results if not r.passed), None)
    record = BootRecord(
        cell=cell.name,
        verdict=failed.verdict if failed else PASSED.name,
        passed=failed is None,
        side_by_side=side_by_side,
        boots=[r.to_json() for r in results],
    )
    atomic.write_json(files.boot_result, record.to_json())
    if failed:
        log = files.boot_log(failed.firmware)
        raise BootTestFailed(explain(failed, log), log=log)
    return results


def _take_slots(
    cpu_slots: Path, settings: BootTestSettings, after: int, others_running: Callable[[], bool], cancel: threading.Event
) -> tuple[contextlib.ExitStack, int] | None:
    """The CPU slots of the next boot: the stack that holds them and how many (None: a boot
    failed meanwhile).

    It keeps boot_test.cpus of them, up to VCPUS_WHEN_FREE where `after` are left for the
    boots after it. While this stage's other boots run, it waits for boot_test.cpus slots
    rather than start with fewer (with 2 vCPUs each on 2 cores, they boot one after the other).
    """
    per_boot = max(settings.cpus, VCPUS_WHEN_FREE)
    need = min(settings.cpus, cpu.cores())
    while True:
        stack = contextlib.ExitStack()
        got = stack.enter_context(
            cpu.slots(
                cpu_slots,
                want=per_boot + after,
                abandon=cancel.is_set,
                keep=lambda got: max(settings.cpus, min(per_boot, got - after)),
            )
        )
        if got and (got >= need or not others_running()):
            return stack, got
        stack.close()
        if not got:
            return None
        time.sleep(cpu.POLL_SECONDS)


def _boot_each(
    cell: Cell,
    files: CellFiles,
    settings: BootTestSettings,
    verdicts: accel.Verdicts,
    firmwares: list[str],
    cpu_slots: Path,
) -> tuple[list[BootResult], int]:
    """Boot every firmware, each once it holds CPU slots; return the boots that decided
    something, and how many ran at once at most.

    Each console goes to a partial file; the logs are committed only once
    every boot has ended, so an interrupted stage leaves none that looks complete.
    """
    cancel = threading.Event()
    partials = {firmware: atomic.partial_path(files.boot_log(firmware)) for firmware in firmwares}
    running, most = 0, 0
    count = threading.Lock()

    def boot_one(firmware: str, vcpus: int, slots: contextlib.ExitStack) -> BootResult | None:
        nonlocal running, most
        with count:
            running += 1
            most = max(most, running)
        try:
            if cancel.is_set():
                return None
            try:
                result = boot(
                    cell.arch.name,
                    files.raw,
                    partials[firmware],
                    dataclasses.replace(settings, cpus=vcpus),
                    firmware,
                    label=f"boot {cell.name} ({firmware})",
                    verdicts=verdicts,
                    cancel=cancel,
                )
            except BaseException:
                cancel.set()
                raise
            if not result.passed:
                cancel.set()  # the stage has failed: the other boots would not change that
            return result
        finally:
            with count:
                running -= 1
            slots.close()  # the cores go back as soon as this boot ends

    for firmware in firmwares:
        atomic.remove_stale_partials(files.boot_log(firmware))
    try:
        with ThreadPoolExecutor(len(firmwares), thread_name_prefix="boot") as pool:
            futures: list[Future[BootResult | None]] = []
            try:
                for index, firmware in enumerate(firmwares):
                    # Boots start in the firmwares' order, each as soon as it holds its slots.
                    after = settings.cpus * (len(firmwares) - 1 - index)
                    taken = _take_slots(cpu_slots, settings, after, lambda: any(not f.done() for f in futures), cancel)
                    if taken is None:  # a boot already failed while this one waited
                        break
                    # The boot's thread holds the slots from here and gives them back when it ends.
                    slots, got = taken
                    futures.append(pool.submit(boot_one, firmware, max(settings.cpus, got), slots))
                results = [future.result() for future in futures]
            except BaseException:
                cancel.set()  # an interruption or an error: stop every boot now
                raise
        decided = [r for r in results if r is not None and r.verdict != CANCELLED.name]
        for result in decided:
            # The log is complete whatever the verdict: it is the evidence.
            atomic.commit(partials[result.firmware], files.boot_log(result.firmware))
        for firmware in set(firmwares) - {r.firmware for r in decided}:
            atomic.remove(files.boot_log(firmware))  # an earlier run's, which this one did not repeat
        return decided, most
    finally:
        for partial in partials.values():
            atomic.remove(partial)
