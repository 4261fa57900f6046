"""The instance test of the release step: the image really runs, configured
as a cloud would configure it, and is checked from the inside.

qemu boots a copy-on-write overlay of the image that is larger than the
image, with a NoCloud seed (a FAT volume labelled CIDATA: meta-data naming
the host, user-data giving the default user an SSH key made for this test),
and forwards a local port to the guest's SSH. Once SSH answers, the test logs
in as the image's own default user (admin on ec2, debian elsewhere) and
checks that cloud-init finished without errors, that the host name is the
one from meta-data, that the root file system grew to the disk, that apt
points at the image's release, and that systemd is running (or degraded,
with the failed units listed). qemu is stopped on every path.

Only images with cloud-init and an SSH server can be tested this way: the
vendors of release.instance_test (tasks/model/settings.py says which and why).
cloud-init finds the NoCloud seed by its label.
"""

from __future__ import annotations

import json
import socket
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tasks.errors import StageFailed
from tasks.model.layout import CellFiles
from tasks.model.matrix import BootTestSettings, Cell
from tasks.progress import StageProgress
from tasks.stages import accel, boottest, diskimage, qemu
from tasks.system import atomic, proc

GROWTH = 2 << 30  # the test disk is this much larger than the image


class InstanceTestFailed(StageFailed):
    pass


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class InstanceResult:
    cell: str
    hostname: str
    user: str = ""  # who logged in over SSH
    passed: bool = False
    seconds_to_ssh: float | None = None
    failure: str | None = None  # why the checks could not run
    checks: list[Check] = field(default_factory=list)
    accelerator: str = ""
    accelerator_reason: str = ""

    def to_json(self) -> dict:
        return asdict(self)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_seed(directory: Path, hostname: str, public_key: str) -> Path:
    """A NoCloud seed volume, made without mounting (mkfs.vfat, mtools)."""
    (directory / "meta-data").write_text(f"instance-id: {hostname}\nlocal-hostname: {hostname}\n")
    (directory / "user-data").write_text("#cloud-config\n" + json.dumps({"ssh_authorized_keys": [public_key]}) + "\n")
    seed = directory / "seed.img"
    proc.run(["mkfs.vfat", "-n", "CIDATA", "-C", str(seed), "2048"])
    proc.run(
        ["mcopy", "-i", str(seed), str(directory / "meta-data"), str(directory / "user-data"), "::/"],
        env={"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"},
    )
    return seed


def default_user(files: CellFiles) -> str:
    """The user cloud-init creates on this image (admin on ec2, debian elsewhere),
    as the build measured it in the image (tasks/stages/imagefacts.py)."""
    user = atomic.read_json(files.facts)["users"]["default_user"] if files.facts.is_file() else None
    if not user:
        raise InstanceTestFailed(
            f"{files.cell.name}: the image has no cloud-init default user to log in as "
            f"({files.facts}); take its vendor out of release.instance_test"
        )
    return user


class Guest:
    def __init__(self, port: int, key: Path, user: str):
        self.port, self.key, self.user = port, key, user

    def run(self, command: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                "ssh",
                "-i",
                str(self.key),
                "-p",
                str(self.port),
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=5",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
                f"{self.user}@127.0.0.1",
                command,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def checks(guest: Guest, cell: Cell, hostname: str, disk_bytes: int) -> list[Check]:
    found = []

    def check(name: str, command: str, verdict) -> None:
        try:
            result = guest.run(command)
        except subprocess.TimeoutExpired as expired:
            found.append(Check(name, False, f"no answer within {expired.timeout:.0f} s"))
            return
        passed, detail = verdict(result)
        found.append(Check(name, passed, detail))

    def cloud_init(r):
        try:
            errors = json.loads(r.stdout.split("\n", 1)[1])["v1"]["errors"]
        except (IndexError, ValueError, KeyError):
            return False, (r.stdout + r.stderr).strip()[-500:]
        status = r.stdout.split("\n", 1)[0]
        return "done" in status and not errors, f"{status}; errors: {errors or 'none'}"

    check(
        "cloud-init finished without errors",
        "cloud-init status --wait >/dev/null 2>&1; cloud-init status | tr '\\n' ' '; echo; "
        "sudo cat /run/cloud-init/result.json",
        cloud_init,
    )
    check(
        "host name from meta-data",
        "hostname",
        lambda r: (r.stdout.strip() == hostname, f"{r.stdout.strip()!r}, meta-data said {hostname!r}"),
    )

    def grown(r):
        try:
            size = int(r.stdout.split()[0])
        except (IndexError, ValueError):
            return False, (r.stdout + r.stderr).strip()
        return size >= disk_bytes - (512 << 20), f"/ is {size / 2**30:.2f} GiB on a {disk_bytes / 2**30:.2f} GiB disk"

    check("root file system grew to the disk", "df --output=size -B1 / | tail -1", grown)
    check(
        "apt points at the image's release",
        "cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources 2>/dev/null",
        lambda r: (
            cell.release.name in r.stdout,
            " | ".join(line for line in r.stdout.splitlines() if line.strip() and not line.startswith("#"))[:300],
        ),
    )

    def systemd(r):
        state = r.stdout.strip().splitlines()[0] if r.stdout.strip() else r.stderr.strip()
        failed = [line.split()[0] for line in r.stdout.strip().splitlines()[1:] if line.strip()]
        return state in ("running", "degraded"), state + (f"; failed units: {', '.join(failed)}" if failed else "")

    check("systemd is running", "systemctl is-system-running --wait; systemctl --failed --no-legend --plain", systemd)
    return found


def console_failure(text: bytes) -> str | None:
    """The boot test's verdict on what the console shows so far (a panic, no root device...), if any."""
    return next((v.name for v in boottest.FAILURES if v.console and v.console.search(text)), None)


def _console(path: Path, offset: int) -> bytes:
    """What this attempt's qemu wrote to the console file (earlier attempts end at offset)."""
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read()


def wait_for_kernel(
    qemu_child: subprocess.Popen, console: Path, offset: int, choice: accel.Choice, deadline: float
) -> str | None:
    """Wait until the kernel starts (or the deadline passes: SSH's wait then says so);
    under KVM, return why KVM fails here instead, if it does."""
    started = last_output = time.monotonic()
    seen = 0
    kernel = dict(boottest.PHASES)["kernel"]
    while time.monotonic() < deadline:
        text, now = _console(console, offset), time.monotonic()
        if len(text) != seen:
            seen, last_output = len(text), now
        exited = qemu_child.poll() is not None
        if choice.kvm:
            failure = accel.kvm_failure(
                text, bool(text), now - started, now - last_output, bool(kernel.search(text)), exited
            )
            if failure:
                return failure
        if kernel.search(text):
            return None
        if exited:
            raise InstanceTestFailed(f"qemu exited ({qemu_child.returncode}) before the kernel started")
        time.sleep(0.25)
    return None


def wait_for_ssh(
    guest: Guest,
    qemu_child: subprocess.Popen,
    console: Path,
    offset: int,
    started: float,
    timeout: float,
    progress: StageProgress,
) -> float:
    """Seconds from started until SSH let us in; fails at once when qemu stops or the console shows a
    failed boot."""
    while time.monotonic() - started < timeout:
        if qemu_child.poll() is not None:
            raise InstanceTestFailed(f"qemu exited ({qemu_child.returncode}) before SSH answered")
        failure = console_failure(_console(console, offset))
        if failure:
            raise InstanceTestFailed(f"the boot failed: {failure}")
        try:
            if guest.run("true", timeout=15).returncode == 0:
                return round(time.monotonic() - started, 1)
        except subprocess.TimeoutExpired:
            pass
        progress.update(completed=time.monotonic() - started, status="waiting for SSH")
        time.sleep(3)
    raise InstanceTestFailed(f"SSH did not answer within {timeout:.0f} s")


@dataclass(frozen=True)
class _Instance:
    """What every boot attempt of one instance test shares."""

    cell: Cell
    raw: Path
    scratch: Path
    seed: Path
    firmware: str
    settings: BootTestSettings
    timeout: float
    user: str  # the image's cloud-init default user


def _boot_and_check(
    instance: _Instance, choice: accel.Choice, console: Path, sink, result: InstanceResult, progress: StageProgress
) -> str | None:
    """One boot of the instance: fills result, or returns why KVM fails (then nothing was checked)."""
    cell, scratch = instance.cell, instance.scratch
    # A fresh disk and variable store each attempt: a failed attempt may have written to them.
    disk = scratch / "instance.qcow2"
    disk.unlink(missing_ok=True)
    disk_bytes = instance.raw.stat().st_size + GROWTH
    proc.run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "raw",
            "-b",
            str(instance.raw.resolve()),
            str(disk),
            str(disk_bytes),
        ]
    )
    uefi_vars = None
    template = qemu.uefi_vars_template(cell.arch.name, instance.firmware)
    if template:
        uefi_vars = scratch / "uefi-vars.fd"
        uefi_vars.write_bytes(template.read_bytes())
    port = _free_port()
    command = qemu.boot_command(
        cell.arch.name,
        instance.firmware,
        disk,
        choice.name,
        instance.settings.memory,
        instance.settings.cpus,
        uefi_vars,
        image_format="qcow2",
        snapshot=False,
        extra_drives=(instance.seed,),
        ssh_port=port,
    )
    sink.flush()
    offset = console.stat().st_size
    progress.update(status=choice.reason)
    child = proc.start(command, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    started = time.monotonic()
    try:
        guest = Guest(port, scratch / "id", instance.user)
        try:
            kvm_failure = wait_for_kernel(child, console, offset, choice, started + instance.timeout)
            if kvm_failure:
                return kvm_failure
            result.seconds_to_ssh = wait_for_ssh(guest, child, console, offset, started, instance.timeout, progress)
        except InstanceTestFailed as failure:
            result.failure = str(failure)
        else:
            progress.update(status="checking")
            result.checks = checks(guest, cell, result.hostname, disk_bytes)
            result.passed = all(c.passed for c in result.checks)
        return None
    finally:
        proc.stop(child, grace=5)


def instance_test(
    cell: Cell, files: CellFiles, settings: BootTestSettings, timeout: float, kvm_verdicts: Path | None = None
) -> InstanceResult:
    """Boot the image as an instance, check it; write instance-test.json and its console log.

    Under KVM the boot is watched as the boot test's is (tasks/stages/accel.py): a
    failing KVM restarts the instance under TCG within seconds.
    """
    hostname = f"release-test-{cell.release.name}"
    user = default_user(files)
    result = InstanceResult(cell.name, hostname, user=user)
    firmware = cell.arch.firmware[-1]  # UEFI where the image has it
    verdicts = accel.Verdicts(kvm_verdicts)
    with (
        tempfile.TemporaryDirectory(prefix="instance-test-", dir=files.dir) as scratch_name,
        diskimage.raw_disk(files) as raw,
    ):
        scratch = Path(scratch_name)
        proc.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "image-instance-test", "-f", str(scratch / "id")]
        )
        seed = make_seed(scratch, hostname, (scratch / "id.pub").read_text().strip())
        instance = _Instance(cell, raw, scratch, seed, firmware, settings, timeout, user)
        choice = qemu.choose_accelerator(cell.arch.name, firmware, settings.accelerator, verdicts)
        console = files.instance_console
        partial = atomic.partial_path(console)
        try:
            with (
                open(partial, "wb") as sink,
                StageProgress(f"instance test {cell.name}", total=timeout, unit="seconds") as progress,
            ):
                kvm_failure = _boot_and_check(instance, choice, partial, sink, result, progress)
                if kvm_failure:
                    qemu.record_kvm_verdict(cell.arch.name, firmware, verdicts, works=False, reason=kvm_failure)
                    if not choice.fallback:
                        raise accel.unusable(cell.arch.name, firmware, kvm_failure)
                    choice = accel.Choice(accel.TCG, f"TCG: KVM failed ({kvm_failure})")
                    sink.write(f"\n----- {choice.reason}: the instance starts again -----\n".encode())
                    _boot_and_check(instance, choice, partial, sink, result, progress)
                elif choice.kvm and result.seconds_to_ssh is not None:
                    qemu.record_kvm_verdict(
                        cell.arch.name, firmware, verdicts, works=True, reason="an instance answered SSH"
                    )
            atomic.commit(partial, console)  # complete, whatever the verdict: it is the evidence
        finally:
            atomic.remove(partial)
    result.accelerator = choice.name
    result.accelerator_reason = choice.reason
    atomic.write_json(files.instance_test, result.to_json())
    if not result.passed:
        failed = [f"{c.name}: {c.detail}" for c in result.checks if not c.passed] or [result.failure or "no check ran"]
        raise InstanceTestFailed(
            f"{cell.name}: the instance test failed: " + "; ".join(failed) + f" (console: {console})", log=console
        )
    return result


def describe(result: InstanceResult) -> str:
    return "\n".join(f"  {'ok ' if c.passed else 'BAD'} {c.name}: {c.detail}" for c in result.checks)
