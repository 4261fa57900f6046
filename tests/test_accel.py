"""KVM or TCG: a boot under a half-working KVM falls back to TCG within seconds.

The half-working host is made faithfully with a wrapper named like qemu in
front of the real one: under ``-accel kvm`` it does what such hosts were seen
to do (OVMF: a few firmware lines, then qemu's "KVM internal error ...
emulation failure" register dump, and the VM stays paused; SeaBIOS and the
kernel: silence), and under TCG it runs the real qemu. /dev/kvm itself is
real, so the boot does try KVM first, as it would on such a host.
"""

import json
import os
import stat
import textwrap

import pytest

from tasks import actions
from tasks.errors import StageFailed
from tasks.model.layout import CellFiles
from tasks.model.matrix import BootTestSettings
from tasks.release import instancetest
from tasks.stages import accel, boottest, qemu

from . import efi_app

LOGIN = b"Linux version 6.1.0\r\nsystemd[1]: systemd 252 running\r\n\r\ndebian login: "
needs_kvm_device = pytest.mark.skipif(
    not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="the boot tries KVM only where /dev/kvm is usable"
)

HALF_WORKING_QEMU = textwrap.dedent("""\
    #!/bin/bash
    # qemu as a host whose KVM half works runs it (see tests/test_accel.py).
    case " $* " in
        *" -accel kvm "*)
            case " $* " in *" q35 "*) ;; *) exec sleep 600 ;; esac   # SeaBIOS and the kernel stay silent
            printf 'BdsDxe: loading Boot0001 "UEFI Misc Device" from PciRoot(0x0)/Pci(0x3,0x0)\\r\\n'
            printf 'KVM internal error. Suberror: 1\\nextra data[0]: 0x0000000000000001\\n' >&2
            printf 'emulation failure\\nEAX=00000000 EBX=00807000 ECX=00000001 EDX=00807154\\n' >&2
            exec sleep 600 ;;   # the VM is paused, qemu stays
    esac
    exec {real} "$@"
    """)


@pytest.fixture
def half_working_kvm(tmp_path, monkeypatch):
    """PATH finds a qemu-system-x86_64 whose KVM fails as a half-working host's does."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "qemu-system-x86_64"
    wrapper.write_text(HALF_WORKING_QEMU.format(real="/usr/bin/qemu-system-x86_64"))
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return accel.Verdicts(tmp_path / "kvm-verdicts.json")


def sector_image(tmp_path, text: bytes = LOGIN):
    image = tmp_path / "sector.img"
    image.write_bytes(qemu.boot_sector(text, exit=False).ljust(1 << 20, b"\0"))
    return image


def cell_on_a_sector(tmp_path, test_matrix, name: str):
    """A cell whose disk.raw is a boot sector printing a boot to login."""
    cell = test_matrix.cell(name)
    files = CellFiles.of(tmp_path / "build", cell)
    files.dir.mkdir(parents=True)
    sector_image(tmp_path).rename(files.raw)
    # What the build measured in the image: the instance test logs in as its default user.
    files.facts.write_text(json.dumps({"schema": "image-facts/1", "users": {"default_user": "debian"}}))
    return cell, files


@needs_kvm_device
def test_bios_boot_falls_back_to_tcg_within_seconds_and_remembers(tmp_path, half_working_kvm):
    settings = BootTestSettings(timeout=60, memory=64, cpus=1, accelerator="auto", until="login")
    log = tmp_path / "boot.log"
    result = boottest.boot("amd64", sector_image(tmp_path), log, settings, "bios", verdicts=half_working_kvm)
    assert result.verdict == "passed" and result.accelerator == "tcg"
    assert result.kvm_attempt is not None and result.kvm_attempt["accelerator"] == "kvm"
    assert result.kvm_attempt["seconds"] <= accel.FIRST_OUTPUT_SECONDS + 2, "within seconds, not at the timeout"
    assert "no console output under KVM" in result.accelerator_reason
    assert "no console output under KVM" in result.to_json()["accelerator_reason"]
    assert b"debian login:" in log.read_bytes()
    remembered = json.loads(half_working_kvm.path.read_text())["amd64/bios"]
    assert remembered["kvm_works"] is False

    # The next boot on this host goes straight to TCG.
    again = boottest.boot("amd64", sector_image(tmp_path), log, settings, "bios", verdicts=half_working_kvm)
    assert again.accelerator == "tcg" and again.kvm_attempt is None
    assert "failed for amd64 bios boots on this host before" in again.accelerator_reason


@needs_kvm_device
def test_uefi_emulation_failure_falls_back_at_once(tmp_path, half_working_kvm):
    settings = BootTestSettings(timeout=120, memory=256, cpus=1, accelerator="auto", until="login")
    log = tmp_path / "boot.log"
    disk = efi_app.boot_disk(tmp_path, LOGIN.decode())
    result = boottest.boot("amd64", disk, log, settings, "uefi", verdicts=half_working_kvm)
    assert result.kvm_attempt is not None and result.kvm_attempt["seconds"] < 3, result.kvm_attempt
    assert "KVM internal error" in result.kvm_attempt["failure"]
    assert result.accelerator == "tcg" and "KVM failed" in result.accelerator_reason
    assert result.verdict == "passed", "then the real OVMF booted the disk's application under TCG"
    kvm_part, _, tcg_part = log.read_bytes().partition(b"the boot starts again")
    assert b"KVM internal error" in kvm_part, "the failed KVM attempt stays in the log"
    assert b"BdsDxe" in tcg_part and b"debian login: " in tcg_part


@needs_kvm_device
def test_accelerator_kvm_where_kvm_fails_is_one_clear_error(tmp_path, half_working_kvm, test_matrix):
    cell, files = cell_on_a_sector(tmp_path, test_matrix, "bookworm-nocloud-amd64")
    settings = BootTestSettings(timeout=60, memory=256, cpus=1, accelerator="kvm", until="login")
    failure = actions.run_stage(
        f"boottest:{cell.name}", boottest.boot_test, cell, files, settings, tmp_path / "cpu", half_working_kvm.path
    )
    assert failure is not None, "a boot that cannot run as asked fails"
    assert failure.message.startswith(f"boottest:{cell.name} failed: boot_test.accelerator is kvm, but KVM fails")
    assert "set boot_test.accelerator to auto" in failure.message
    assert "Traceback" not in failure.get_msg()
    # Now remembered: refused before qemu starts.
    with pytest.raises(accel.AcceleratorUnusable, match="KVM fails here for amd64 uefi boots"):
        qemu.choose_accelerator("amd64", "uefi", "kvm", half_working_kvm)


@needs_kvm_device
def test_the_release_instance_test_falls_back_too(tmp_path, half_working_kvm, test_matrix):
    """The instance test boots UEFI: OVMF's emulation failure restarts it under TCG at once.
    (The disk boots nothing, so the test then fails on its deadline, once, not twice.)"""
    cell, files = cell_on_a_sector(tmp_path, test_matrix, "bookworm-genericcloud-amd64")
    settings = BootTestSettings(timeout=60, memory=256, cpus=1, accelerator="auto", until="login")
    with pytest.raises(instancetest.InstanceTestFailed, match="SSH did not answer within 12 s"):
        instancetest.instance_test(cell, files, settings, timeout=12, kvm_verdicts=half_working_kvm.path)
    result = json.loads((files.dir / "instance-test.json").read_text())
    assert result["accelerator"] == "tcg" and "KVM internal error" in result["accelerator_reason"]
    console = (files.dir / "instance-test-console.log").read_bytes()
    assert b"KVM internal error" in console and console.count(b"the instance starts again") == 1
    assert json.loads(half_working_kvm.path.read_text())["amd64/uefi"]["kvm_works"] is False


@pytest.mark.parametrize(
    "new_output, any_output, elapsed, quiet, kernel, exited, expected",
    [
        (b"KVM internal error. Suberror: 1\n", True, 0.2, 0, False, False, "KVM internal error"),
        (b"emulation failure\n", True, 0.2, 0, False, False, "emulation failure"),
        (b"KVM: entry failed, hardware error 0x80000021\n", True, 1, 0, False, False, "entry failed"),
        (
            b"qemu-system-x86_64: ../target/i386/kvm/kvm.c:2956: kvm_buf_set_msrs: Assertion `ret == cpu->kvm_msr_buf"
            b"->nmsrs' failed.\n",
            True,
            0.1,
            0,
            False,
            True,
            "Assertion",
        ),
        (b"", False, accel.FIRST_OUTPUT_SECONDS, 0, False, False, "no console output"),
        (b"", False, accel.FIRST_OUTPUT_SECONDS - 1, 0, False, False, None),
        (b"", True, 30, accel.STALL_SECONDS, False, False, "went silent"),
        (b"", True, 30, accel.STALL_SECONDS - 1, False, False, None),
        (b"", True, 2, 0, False, True, "exited under KVM"),
        # Once the kernel runs, silence and exits are the image's business.
        (b"", True, 60, 30, True, False, None),
        (b"", True, 60, 0, True, True, None),
        (b"Welcome to GRUB!\r\n", True, 1, 0, False, False, None),
    ],
)
def test_signs_of_a_failing_kvm(new_output, any_output, elapsed, quiet, kernel, exited, expected):
    found = accel.kvm_failure(new_output, any_output, elapsed, quiet, kernel, exited)
    if expected is None:
        assert found is None
    else:
        assert found is not None and expected in found


def test_verdicts_are_tied_to_this_host(tmp_path):
    verdicts = accel.Verdicts(tmp_path / "v.json")
    here = accel.Verdicts.host_identity("qemu-system-x86_64", "/usr/share/OVMF/OVMF_CODE_4M.fd")
    verdicts.put("amd64/uefi", here, False, "emulation failure")
    assert (verdicts.get("amd64/uefi", here) or {}).get("kvm_works") is False
    assert verdicts.get("amd64/uefi", here + "|another qemu") is None, "another qemu, kernel or boot: ask again"
    assert verdicts.get("amd64/bios", here) is None
    assert accel.Verdicts(None).get("amd64/uefi", here) is None, "no file: nothing remembered"


def test_choice_follows_the_setting_and_what_is_remembered(tmp_path):
    verdicts = accel.Verdicts(tmp_path / "v.json")
    assert qemu.choose_accelerator("amd64", "bios", "tcg", verdicts).name == "tcg"
    assert qemu.choose_accelerator("arm64", "uefi", "auto", verdicts).name == "tcg"
    with pytest.raises(StageFailed, match="boot_test.accelerator is kvm, but no KVM for arm64"):
        qemu.choose_accelerator("arm64", "uefi", "kvm", verdicts)
    if accel.kvm_unavailable("amd64", "qemu-system-x86_64") is None:
        trial = qemu.choose_accelerator("amd64", "uefi", "auto", verdicts)
        assert trial.kvm and trial.fallback and "on trial" in trial.reason
        qemu.record_kvm_verdict("amd64", "uefi", verdicts, works=False, reason="emulation failure")
        known = qemu.choose_accelerator("amd64", "uefi", "auto", verdicts)
        assert known.name == "tcg" and "emulation failure" in known.reason
        qemu.record_kvm_verdict("amd64", "bios", verdicts, works=True, reason="a boot reached login")
        trusted = qemu.choose_accelerator("amd64", "bios", "kvm", verdicts)
        assert trusted.kvm and not trusted.fallback, "accelerator kvm: a failure is an error, not a fallback"
