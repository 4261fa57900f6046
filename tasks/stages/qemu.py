"""How to start qemu for an image: the machine and firmware per architecture.

Whether a boot runs under KVM or TCG is decided in tasks/stages/accel.py.
"""

from __future__ import annotations

from pathlib import Path

from tasks.model.arch import Arch, Firmware, Machine
from tasks.stages import accel


def machine(arch: str, firmware: str) -> Machine:
    """How qemu boots arch's images through firmware (the architecture registry, tasks/model/arch.py)."""
    return Arch.named(arch).machine(firmware)


# A real-mode boot sector: print a message on COM1, then either write 0x10
# to an isa-debug-exit port at 0xf4 (qemu exits with status 0x21) or halt.
_PRINT_THEN_EXIT = bytes.fromhex("31C08ED8FCBAF803BE1C7CAC84C07403EEEBF8BAF400B010EEF4EBFD")
_EXIT_INSTRUCTION = 24  # offset of "out dx, al" to the exit port


def boot_sector(message: bytes, exit: bool = True) -> bytes:
    """A 512-byte boot sector that prints message on the serial console (the boot test's tests use it)."""
    code = bytearray(_PRINT_THEN_EXIT)
    if not exit:
        code[_EXIT_INSTRUCTION] = 0x90  # nop: halt instead of exiting
    body = bytes(code) + message + b"\0"
    if len(body) > 510:
        raise ValueError(f"message too long for a boot sector: {len(message)} bytes")
    return body + bytes(510 - len(body)) + b"\x55\xaa"


def choose_accelerator(arch: str, firmware: str, wanted: str, verdicts: accel.Verdicts) -> accel.Choice:
    """KVM or TCG for booting arch through firmware (tasks/stages/accel.py)."""
    qemu = machine(arch, firmware)
    return accel.choose(arch, firmware, wanted, qemu.binary, qemu.firmware_file, verdicts)


def record_kvm_verdict(arch: str, firmware: str, verdicts: accel.Verdicts, works: bool, reason: str) -> None:
    qemu = machine(arch, firmware)
    accel.record(arch, firmware, qemu.binary, qemu.firmware_file, verdicts, works, reason)


def boot_command(
    arch: str,
    firmware: str,
    image: Path,
    accel: str,
    memory: int,
    cpus: int,
    uefi_vars: Path | None = None,
    *,
    image_format: str = "raw",
    snapshot: bool = True,
    extra_drives: tuple[Path, ...] = (),
    ssh_port: int | None = None,
) -> list[str]:
    """qemu booting image from its own boot loader, console on stdout.

    snapshot=on sends every write to a temporary overlay: the image under
    test is never modified. For UEFI, uefi_vars is this boot's own copy of
    the firmware's variable store (see uefi_vars_template). extra_drives are
    attached as further virtio disks (a cloud-init seed); ssh_port forwards
    that port of 127.0.0.1 to the guest's SSH.
    """
    qemu = machine(arch, firmware)
    command = [
        qemu.binary,
        "-accel",
        accel,
        "-machine",
        qemu.machine,
        "-cpu",
        qemu.cpu(accel),
        "-smp",
        str(cpus),
        "-m",
        str(memory),
        "-nodefaults",
        "-display",
        "none",
        "-no-reboot",
        "-chardev",
        "stdio,id=console,signal=off",
        "-serial",
        "chardev:console",
        "-drive",
        f"file={image},format={image_format},if=virtio" + (",snapshot=on" if snapshot else ""),
        *(arg for drive in extra_drives for arg in ("-drive", f"file={drive},format=raw,if=virtio,readonly=on")),
        "-netdev",
        "user,id=net0" + (f",hostfwd=tcp:127.0.0.1:{ssh_port}-:22" if ssh_port else ""),
        "-device",
        "virtio-net-pci,netdev=net0",
    ]
    if qemu.vga:
        command += ["-vga", qemu.vga]
    if firmware == Firmware.UEFI:
        if uefi_vars is None:
            raise ValueError("a UEFI boot needs its own copy of the variable store")
        command += [
            "-drive",
            f"if=pflash,format=raw,unit=0,readonly=on,file={qemu.uefi_code}",
            "-drive",
            f"if=pflash,format=raw,unit=1,file={uefi_vars}",
        ]
    return command


def uefi_vars_template(arch: str, firmware: str) -> Path | None:
    qemu = machine(arch, firmware)
    return Path(qemu.uefi_vars) if qemu.uefi_vars else None
