"""The fixed vocabularies of the project, each with its behaviour, in one place.

Arch is the architecture registry: everything that differs between amd64 and
arm64 (the qemu machines that boot them, their firmware files, EFI names,
GPT root type, how binfmt runs them, what the cloud platforms call them) is
a field of its ArchSpec and read from here, nowhere else. The other enums are
str-valued, so they read and compare as the words matrix.yaml and the JSON
records use ("bios", "kvm", "login", "tar.xz").

This module imports nothing of the project: every layer may use it.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field


class Firmware(enum.StrEnum):
    """What an image boots from; the boot test tries each its architecture has."""

    BIOS = "bios"
    UEFI = "uefi"


class Accelerator(enum.StrEnum):
    """qemu's -accel; boot_test.accelerator may also be "auto" (KVM when it works here)."""

    KVM = "kvm"
    TCG = "tcg"


AUTO = "auto"


class Milestone(enum.StrEnum):
    """What a boot test can wait for before it passes (tasks/stages/boottest.py watches for each)."""

    SYSTEMD = "systemd"
    LOGIN = "login"


class Format(enum.StrEnum):
    """An output format a vendor can ask for; artifact is the file it produces."""

    TAR_XZ = "tar.xz"  # sparse GNU tar holding disk.raw, xz-compressed
    QCOW2 = "qcow2"  # compressed qcow2 (qemu-img convert -c)
    VHD_TAR_XZ = "vhd.tar.xz"  # fixed-size VHD (Azure) as disk.vhd in a sparse tar, xz
    TAR_GZ = "tar.gz"  # disk.raw in an oldgnu tar, gzip (GCE image import)

    @property
    def artifact(self) -> str:
        return f"image.{self.value}"


@dataclass(frozen=True)
class Machine:
    """How qemu starts an architecture's image through one firmware."""

    binary: str
    machine: str
    kvm_cpu: str = "host"
    tcg_cpu: str = "max"
    # UEFI firmware: read-only code and a template of the variable store
    # (each boot writes to a copy of its own).
    uefi_code: str = ""
    uefi_vars: str = ""
    # The firmware qemu runs: part of what decides whether KVM works (tasks/stages/accel.py).
    firmware_file: str = ""
    # A video adapter (qemu's -vga), as every PC has, shown nowhere: Debian's grub-cloud-amd64
    # sends GRUB's output to gfxterm as well as serial, and without an adapter a BIOS boot of
    # trixie hangs silently at "Booting" (its kernel, given directly, boots). "": none.
    vga: str = ""

    def cpu(self, accelerator: str) -> str:
        return self.kvm_cpu if accelerator == Accelerator.KVM else self.tcg_cpu


# GPT partition types every architecture's disk shares (the root's is its own: ArchSpec).
ESP_PARTITION_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"  # the EFI system partition
BIOS_BOOT_PARTITION_TYPE = "21686148-6449-6E6F-744E-656564454649"  # where GRUB's BIOS core image lives


@dataclass(frozen=True)
class ArchSpec:
    debian: str  # Debian's name: amd64
    uname: str  # what `uname -m` says on such a machine
    qemu_user: str  # qemu-user's name for it, as binfmt_misc registers qemu-<name>
    machines: dict[Firmware, Machine] = field(hash=False)  # the firmware its images boot from, in boot-test order
    efi_name: str  # the EFI files' suffix: shimx64.efi, BOOTAA64.EFI
    grub_efi: str  # GRUB's EFI platform: x86_64-efi
    grub_bios: str  # GRUB's BIOS platform, when the architecture boots through BIOS
    root_partition_type: str  # the discoverable-partitions GPT type of its root
    ec2: str  # EC2's architecture name
    gce: str  # GCE's architecture name
    # The CPU qemu-user emulates for its programs in a foreign build (QEMU_CPU); "": qemu's default.
    user_cpu: str = ""

    @property
    def multiarch(self) -> str:
        """Debian's multiarch triplet: where its libraries go (/usr/lib/x86_64-linux-gnu)."""
        return f"{self.uname}-linux-gnu"

    @property
    def grub_platforms(self) -> tuple[str, ...]:
        """The GRUB platforms an image of this architecture has in /boot/grub."""
        return tuple(p for p in (self.grub_bios, self.grub_efi) if p)


# The arm64 CPU the clouds rent most (AWS Graviton2, Ampere Altra at Azure, GCE and
# Oracle): an Armv8.2 core without pointer authentication or SVE. Debian's kernels and
# trixie's programs sign return addresses; on this CPU those instructions are NOPs, so
# neither a TCG boot nor a foreign build pays for emulating a cipher on every call.
# (docs/config-space.md, "arm64 on an amd64 host": what it saved against max,pauth-impdef=on.)
_ARM64_EMULATED_CPU = "neoverse-n1"


class Arch(enum.Enum):
    AMD64 = ArchSpec(
        debian="amd64",
        uname="x86_64",
        qemu_user="x86_64",
        machines={
            Firmware.BIOS: Machine(
                "qemu-system-x86_64", "pc", firmware_file="/usr/share/seabios/bios-256k.bin", vga="std"
            ),
            Firmware.UEFI: Machine(
                "qemu-system-x86_64",
                "q35",
                uefi_code="/usr/share/OVMF/OVMF_CODE_4M.fd",
                uefi_vars="/usr/share/OVMF/OVMF_VARS_4M.fd",
                firmware_file="/usr/share/OVMF/OVMF_CODE_4M.fd",
            ),
        },
        efi_name="x64",
        grub_efi="x86_64-efi",
        grub_bios="i386-pc",
        root_partition_type="4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
        ec2="x86_64",
        gce="X86_64",
    )
    ARM64 = ArchSpec(
        debian="arm64",
        uname="aarch64",
        qemu_user="aarch64",
        machines={
            Firmware.UEFI: Machine(
                "qemu-system-aarch64",
                "virt",
                tcg_cpu=_ARM64_EMULATED_CPU,
                uefi_code="/usr/share/AAVMF/AAVMF_CODE.fd",
                uefi_vars="/usr/share/AAVMF/AAVMF_VARS.fd",
                firmware_file="/usr/share/AAVMF/AAVMF_CODE.fd",
            ),
        },
        efi_name="aa64",
        grub_efi="arm64-efi",
        grub_bios="",
        root_partition_type="B921B045-1DF0-41C3-AF44-4C6F280D3FAE",
        ec2="arm64",
        gce="ARM64",
        user_cpu=_ARM64_EMULATED_CPU,
    )

    @classmethod
    def named(cls, name: str) -> Arch:
        """The architecture Debian calls name; KeyError when there is none."""
        for arch in cls:
            if arch.value.debian == name:
                return arch
        raise KeyError(name)

    @classmethod
    def of_host(cls) -> Arch:
        """The architecture of the machine this runs on; KeyError for one this project lacks."""
        machine = os.uname().machine
        for arch in cls:
            if arch.value.uname == machine:
                return arch
        raise KeyError(machine)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(arch.value.debian for arch in cls)

    @property
    def spec(self) -> ArchSpec:
        return self.value

    @property
    def firmware(self) -> tuple[Firmware, ...]:
        return tuple(self.value.machines)

    def machine(self, firmware: str) -> Machine:
        return self.value.machines[Firmware(firmware)]
