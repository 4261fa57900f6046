"""The architecture registry and the fixed vocabularies (tasks/model/arch.py):
every part that differs per architecture reads them."""

import pytest

from tasks.model.arch import Accelerator, Arch, Firmware, Format, Milestone
from tasks.model.layout import CellFiles
from tasks.model.records import Manifest
from tasks.release.platforms import ec2, gce
from tasks.release.platforms.gce import GceSettings
from tasks.stages import fai, qemu


def test_architectures_by_debian_name():
    assert Arch.names() == ("amd64", "arm64")
    assert Arch.named("arm64") is Arch.ARM64
    with pytest.raises(KeyError):
        Arch.named("riscv64")
    assert Arch.AMD64.firmware == (Firmware.BIOS, Firmware.UEFI)
    assert Arch.ARM64.firmware == (Firmware.UEFI,)
    assert Arch.AMD64.spec.grub_platforms == ("i386-pc", "x86_64-efi")
    assert Arch.ARM64.spec.grub_platforms == ("arm64-efi",)
    assert (Arch.AMD64.spec.multiarch, Arch.ARM64.spec.multiarch) == ("x86_64-linux-gnu", "aarch64-linux-gnu")


def test_vocabularies_read_as_the_words_of_the_matrix_and_records():
    assert Firmware("uefi") is Firmware.UEFI and f"{Firmware.BIOS}" == "bios"
    assert Milestone.LOGIN == "login" and Accelerator.TCG == "tcg"
    assert [fmt.artifact for fmt in Format] == ["image.tar.xz", "image.qcow2", "image.vhd.tar.xz", "image.tar.gz"]
    assert Arch.AMD64.machine("bios").cpu(Accelerator.KVM) == "host"
    assert Arch.AMD64.machine("bios").cpu(Accelerator.TCG) == "max"


@pytest.mark.parametrize(
    "arch, binary, machine", [("amd64", "qemu-system-x86_64", "q35"), ("arm64", "qemu-system-aarch64", "virt")]
)
def test_qemu_boots_each_architecture_from_the_registry(tmp_path, arch, binary, machine):
    command = qemu.boot_command(arch, "uefi", tmp_path / "disk.raw", "tcg", 512, 1, uefi_vars=tmp_path / "vars")
    assert command[0] == binary and command[command.index("-machine") + 1] == machine
    code = Arch.named(arch).machine("uefi").uefi_code
    assert f"if=pflash,format=raw,unit=0,readonly=on,file={code}" in command
    assert "-vga" not in command


def test_a_bios_boot_has_a_video_adapter_as_a_pc_has(tmp_path):
    """GRUB's gfxterm output (grub-cloud-amd64) hangs a BIOS boot of trixie without one."""
    command = qemu.boot_command("amd64", "bios", tmp_path / "disk.raw", "tcg", 512, 1)
    assert command[command.index("-vga") + 1] == "std" and command[command.index("-display") + 1] == "none"


@pytest.mark.parametrize(
    "cell_name, ec2_arch, boot_mode, gce_arch",
    [
        ("bookworm-ec2-amd64", "x86_64", "uefi-preferred", "X86_64"),
        ("bookworm-ec2-arm64", "arm64", "uefi", "ARM64"),
    ],
)
def test_the_platforms_names_come_from_the_registry(test_matrix, cell_name, ec2_arch, boot_mode, gce_arch):
    cell = test_matrix.cell(cell_name)
    request = ec2.register_request(cell, "name", "snap-1", "description")
    assert request["Architecture"] == ec2_arch and request["BootMode"] == boot_mode
    gce_cell = test_matrix.cell(cell_name.replace("-ec2-", "-gce-"))
    described = Manifest("debian-12-gce", {}, "gce", gce_cell.arch.name, "1", {}, [], {}, [], {}, [], None)
    _, body = gce.image_request(gce_cell, described, GceSettings("p", "b"), "gs://b/o")
    assert body["architecture"] == gce_arch


def test_the_config_space_gets_the_architecture_facts(test_matrix, tmp_path):
    facts = fai.fai_arch_facts(test_matrix.cell("trixie-genericcloud-arm64"))
    assert facts == {
        "IMAGE_FIRMWARE": "uefi",
        "IMAGE_EFI_NAME": "aa64",
        "IMAGE_GRUB_EFI": "arm64-efi",
        "IMAGE_ROOT_PARTITION_TYPE": "B921B045-1DF0-41C3-AF44-4C6F280D3FAE",
        "IMAGE_ESP_PARTITION_TYPE": "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
        "IMAGE_BIOS_PARTITION_TYPE": "21686148-6449-6E6F-744E-656564454649",
    }
    assert fai.fai_arch_facts(test_matrix.cell("trixie-genericcloud-amd64"))["IMAGE_FIRMWARE"] == "bios uefi"
    assert CellFiles.of(tmp_path, test_matrix.cell("trixie-azure-amd64")).artifacts[-1].name == "image.vhd.tar.xz"
