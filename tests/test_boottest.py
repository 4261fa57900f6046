"""The boot test's console reading, against a real qemu.

Each test boots a 512-byte boot sector that prints a chosen console text and
then halts: the real qemu, the real serial console and the real verdict
logic, in about a second per boot instead of a minute.
"""

import json
import os
import subprocess
import time

import pytest

from tasks.model.layout import CellFiles
from tasks.model.matrix import BootTestSettings
from tasks.stages import boottest, qemu
from tasks.system import cpu

FAST = BootTestSettings(timeout=20, memory=64, cpus=1, accelerator="auto", until="login")


def boot_text(tmp_path, text: bytes, settings=FAST):
    image = tmp_path / "sector.img"
    image.write_bytes(qemu.boot_sector(text, exit=False).ljust(1 << 20, b"\0"))
    log = tmp_path / "boot.log"
    return boottest.boot("amd64", image, log, settings), log


def qemu_processes_for(path) -> list[str]:
    out = subprocess.run(["pgrep", "-af", "qemu-system"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if str(path) in line]


def test_login_prompt_passes_and_records_milestones(tmp_path):
    text = b"Linux version 6.1.0\r\nsystemd[1]: systemd 252 running\r\nWelcome to Debian\r\n\r\ndebian login: "
    result, log = boot_text(tmp_path, text)
    assert result.verdict == "passed" and result.passed
    assert set(result.milestones) == {"kernel", "systemd", "login"}
    assert result.milestones["kernel"] <= result.milestones["systemd"] <= result.milestones["login"]
    assert result.accelerator in ("kvm", "tcg") and result.accelerator_reason
    assert b"debian login:" in log.read_bytes()
    assert not qemu_processes_for(tmp_path), "qemu must be stopped once the verdict is in"


def test_until_systemd_passes_without_login(tmp_path):
    settings = BootTestSettings(timeout=20, memory=64, cpus=1, until="systemd")
    result, _ = boot_text(
        tmp_path, b"Linux version 6.1.0\r\n[    9.1] systemd[1]: Detected virtualization\r\n", settings
    )
    assert result.verdict == "passed"
    assert "login" not in result.milestones


@pytest.mark.parametrize(
    "text, verdict",
    [
        (b"Linux version 6.1\r\nKernel panic - not syncing: Attempted to kill init!\r\n", "kernel-panic"),
        (
            b"Linux version 6.1\r\nGave up waiting for root file system device.  Common problems:\r\n"
            b"ALERT!  UUID=0000 does not exist.  Dropping to a shell!\r\n(initramfs) ",
            "root-device-not-found",
        ),
        (
            b'VFS: Cannot open root device "sda1"\r\nKernel panic - not syncing: VFS: Unable to mount root fs\r\n',
            "root-device-not-found",
        ),
        (
            b"Linux version 6.1\r\nsystemd[1]: Started\r\nYou are in emergency mode. After logging in, type...\r\n",
            "emergency-mode",
        ),
        (
            b"Linux version 6.12\r\nrun-init: /sbin/init: No such file or directory\r\n"
            b"Target filesystem doesn't have requested /sbin/init.\r\n",
            "init-not-found",
        ),
    ],
)
def test_failures_are_named_at_once(tmp_path, text, verdict):
    result, _ = boot_text(tmp_path, text)
    assert result.verdict == verdict
    assert not result.passed
    assert result.seconds < FAST.timeout / 2, "a known failure must not wait for the timeout"
    message = boottest.explain(result, tmp_path / "boot.log")
    assert str(tmp_path / "boot.log") in message


def test_silence_times_out(tmp_path):
    settings = BootTestSettings(timeout=3, memory=64, cpus=1, accelerator="tcg")
    result, _ = boot_text(tmp_path, b"Linux version 6.1\r\n", settings)
    assert result.verdict == "timeout"
    assert result.seconds >= 3
    assert not qemu_processes_for(tmp_path)


def test_qemu_that_exits_early_is_a_failure(tmp_path):
    image = tmp_path / "exit.img"
    image.write_bytes(qemu.boot_sector(b"Linux version 6.1\r\n", exit=True).ljust(1 << 20, b"\0"))
    command = qemu.boot_command("amd64", "bios", image, "tcg", 64, 1) + [
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x04",
    ]
    # boot() builds its own command; exercise the same loop with the exit device.
    original = qemu.boot_command
    qemu.boot_command = lambda *args: command
    try:
        result = boottest.boot(
            "amd64", image, tmp_path / "boot.log", BootTestSettings(timeout=20, memory=64, cpus=1, accelerator="tcg")
        )
    finally:
        qemu.boot_command = original
    assert result.verdict == "qemu-exited"


def test_image_is_never_written(tmp_path):
    image = tmp_path / "sector.img"
    image.write_bytes(qemu.boot_sector(b"debian login: ", exit=False).ljust(1 << 20, b"\0"))
    before = (image.read_bytes(), os.stat(image).st_mtime_ns)
    boottest.boot("amd64", image, tmp_path / "boot.log", FAST)
    assert (image.read_bytes(), os.stat(image).st_mtime_ns) == before


def test_boot_sector_message_limit():
    with pytest.raises(ValueError):
        qemu.boot_sector(b"x" * 500)


def nocloud_amd64(tmp_path, test_matrix, raw: bytes):
    """A cell with two firmwares (BIOS and UEFI), and its files with raw as its disk."""
    cell = test_matrix.cell("bookworm-nocloud-amd64")
    files = CellFiles.of(tmp_path / "build", cell)
    files.dir.mkdir(parents=True)
    files.raw.write_bytes(raw)
    return cell, files


def test_firmwares_boot_side_by_side_and_the_first_failure_stops_the_other(tmp_path, test_matrix):
    """BIOS panics at once; the UEFI boot beside it (OVMF finds nothing to boot and would try the
    network for minutes) is stopped then and there, and only the deciding boot is recorded."""
    panic = qemu.boot_sector(b"Linux version 6.1\r\nKernel panic - not syncing: test\r\n", exit=False)
    cell, files = nocloud_amd64(tmp_path, test_matrix, panic.ljust(1 << 20, b"\0"))
    settings = BootTestSettings(timeout=120, memory=256, cpus=1, accelerator="tcg", until="login")
    started = time.monotonic()
    with pytest.raises(boottest.BootTestFailed, match="the kernel panicked") as failed:
        boottest.boot_test(cell, files, settings, tmp_path / "cpu")
    assert time.monotonic() - started < 20, "the UEFI boot did not wait for its timeout"
    assert failed.value.log == files.boot_log("bios")
    result = json.loads(files.boot_result.read_text())
    assert result["side_by_side"] == min(2, cpu.cores())
    assert [b["firmware"] for b in result["boots"]] == ["bios"]
    assert sorted(p.name for p in files.dir.iterdir()) == ["boot-bios.log", "boottest.json", "disk.raw"]
    assert not qemu_processes_for(files.raw)


def stand_in_boots(monkeypatch, seconds: float) -> dict:
    """Each boot a timed stand-in for qemu (the tests above boot the real one): what the tests
    using it check is when each firmware's boot starts and with how many vCPUs."""
    started = {}
    t0 = time.monotonic()

    def stand_in(arch, image, log, settings, firmware, **kwargs):
        started[firmware] = (time.monotonic() - t0, settings.cpus)
        time.sleep(seconds)
        log.write_text("debian login: ")
        return boottest.BootResult("passed", firmware, "tcg", "stand-in", settings.until, seconds, vcpus=settings.cpus)

    monkeypatch.setattr(boottest, "boot", stand_in)
    return started


@pytest.mark.skipif(cpu.cores() < 2, reason="needs a core held by another task and one free")
def test_a_boot_that_waited_for_a_slot_starts_when_any_task_frees_one(tmp_path, test_matrix, monkeypatch):
    """Told by events, not by the clock: the UEFI boot waits for the cores another task holds, and
    starts as soon as that task frees them, while the BIOS boot still runs."""
    import threading

    cell, files = nocloud_amd64(tmp_path, test_matrix, b"\0" * 512)
    slots = tmp_path / "cpu"
    events: list[tuple] = []
    held, bios_started, uefi_started = threading.Event(), threading.Event(), threading.Event()

    def stand_in(arch, image, log, settings, firmware, **kwargs):
        events.append((firmware, "starts", settings.cpus))
        if firmware == "bios":
            bios_started.set()
            events.append(("bios", "sees uefi start" if uefi_started.wait(60) else "ends alone"))
        else:
            uefi_started.set()
        log.write_text("debian login: ")
        return boottest.BootResult("passed", firmware, "tcg", "stand-in", settings.until, 1, vcpus=settings.cpus)

    monkeypatch.setattr(boottest, "boot", stand_in)

    # Another task (a compression, say) holds every core but one until the BIOS boot has started.
    def other_task():
        with cpu.slots(slots, want=cpu.cores() - 1):
            held.set()
            bios_started.wait(60)
            events.append(("other task", "frees its cores"))

    threading.Thread(target=other_task, daemon=True).start()
    assert held.wait(60)
    boottest.boot_test(cell, files, FAST, slots)

    # With a second vCPU for UEFI where a core was left over beside the BIOS boot.
    uefi_vcpus = min(boottest.VCPUS_WHEN_FREE, cpu.cores() - 1)
    assert events == [
        ("bios", "starts", 1),
        ("other task", "frees its cores"),
        ("uefi", "starts", uefi_vcpus),
        ("bios", "sees uefi start"),
    ]
    record = json.loads(files.boot_result.read_text())
    assert record["side_by_side"] == 2
    assert [b["vcpus"] for b in record["boots"]] == [1, uefi_vcpus]


@pytest.mark.parametrize(
    "cores, cpus, vcpus, side_by_side",
    [
        (1, 1, [1, 1], 1),
        (2, 1, [1, 1], 2),
        (3, 1, [2, 1], 2),
        (4, 1, [2, 2], 2),
        (2, 2, [2, 2], 1),  # boot_test.cpus 2 on 2 cores: one after the other
        (3, 2, [2, 2], 1),  # the third core is not enough to start the second boot beside the first
        (4, 2, [2, 2], 2),
    ],
)
def test_free_cores_are_shared_out_between_the_boots(
    tmp_path, test_matrix, monkeypatch, cores, cpus, vcpus, side_by_side
):
    """A boot takes a second vCPU only where the boots after it still find a core, and waits
    for boot_test.cpus cores rather than start beside the other with fewer."""
    import dataclasses

    cell, files = nocloud_amd64(tmp_path, test_matrix, b"\0" * 512)
    monkeypatch.setattr(cpu, "cores", lambda: cores)
    monkeypatch.setattr(cpu, "POLL_SECONDS", 0.05)
    started = stand_in_boots(monkeypatch, 0.5)
    boottest.boot_test(cell, files, dataclasses.replace(FAST, cpus=cpus), tmp_path / "cpu")
    assert [started[firmware][1] for firmware in ("bios", "uefi")] == vcpus
    record = json.loads(files.boot_result.read_text())
    assert (record["side_by_side"], [b["vcpus"] for b in record["boots"]]) == (side_by_side, vcpus)
