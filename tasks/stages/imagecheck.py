"""The checks every finished image tree must pass, run inside its build.

FAI's tests task runs them (fai_config/tests/LAST/10-image-checks) on the
mounted root file system once the clean-up is done; a failed check fails
the build with the check's name (tasks/stages/fai.py reads FAI's test log). They are Debian's own in-image tests (the
cloud team's system_tests/image: users, groups, packages, /var/log, /boot,
/etc) and this project's stricter ones (no build host leftovers, boot
loader on the ESP, root by PARTUUID).

    python -m tasks.stages.imagecheck --root DIR --arch amd64 --classes "DEBIAN ..." [--esp DEVICE]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tasks.model.arch import Arch
from tasks.system import hostenv

# Debian's rules (system_tests/image/test_etc.py): names from base-passwd,
# then those the images' packages create.
BASE_PASSWD_GROUPS = {
    "root",
    "daemon",
    "bin",
    "sys",
    "adm",
    "tty",
    "disk",
    "lp",
    "mail",
    "news",
    "uucp",
    "man",
    "proxy",
    "kmem",
    "dialout",
    "fax",
    "voice",
    "cdrom",
    "floppy",
    "tape",
    "sudo",
    "audio",
    "dip",
    "www-data",
    "backup",
    "operator",
    "list",
    "irc",
    "src",
    "shadow",
    "utmp",
    "video",
    "sasl",
    "plugdev",
    "staff",
    "games",
    "users",
    "nogroup",
}
PACKAGE_GROUPS = {
    "messagebus",
    "polkitd",
    "tcpdump",
    "input",
    "kvm",
    "render",
    "sgx",
    "uuidd",
    # From Debian 13: systemd's clock group; dhcpcd-base, which cloud-init depends on.
    "clock",
    "dhcpcd",
}
REQUIRED_GROUPS = {"root", "nogroup", "adm", "audio", "cdrom", "dialout", "dip", "floppy", "plugdev", "sudo", "video"}
BASE_PASSWD_USERS = {
    "root",
    "daemon",
    "bin",
    "sys",
    "sync",
    "games",
    "man",
    "lp",
    "mail",
    "news",
    "uucp",
    "proxy",
    "www-data",
    "backup",
    "list",
    "irc",
    "gnats",
    "nobody",
}
PACKAGE_USERS = {"messagebus", "polkitd", "sshd", "tcpdump", "uuidd", "dhcpcd"}
NO_LOGIN_SHELLS = {"/bin/false", "/sbin/nologin", "/usr/sbin/nologin"}
SYSTEM_PREFIXES = ("_", "systemd-")
VAR_LOG_ALLOWED = {
    "apt",
    "btmp",
    "chrony",
    "faillog",
    "journal",
    "lastlog",
    "private",
    "runit",
    "unattended-upgrades",
    "wtmp",
    "README",
}
EMPTY_DIRECTORIES = ("dev", "proc", "run", "sys", "tmp", "var/cache/apt", "var/lib/apt/lists", "var/tmp")
ABSENT_FILES = ("etc/mailname", "initrd.img", "vmlinux", "vmlinuz")
BOOT_FILES = ("boot/initrd.img*", "boot/vmlinu[xz]*", "boot/grub/grub.cfg")
# GRUB's module directories, and the UEFI file names, per architecture.
LOCALHOST_NAMES = {"localhost", "ip6-localhost", "ip6-loopback", "ip6-allnodes", "ip6-allrouters"}
# Files hooks/updatebase.DEBIAN adds for the build only.
BUILD_HELPERS = ("etc/dpkg/dpkg.cfg.d/image-build-unsafe-io", "etc/apt/apt.conf.d/00image-build")
# What a program run by the build's apt records of that run: apt-listchanges'
# seen-database (listchanges.db in bookworm, listchanges* after), which the
# build keeps it from writing (class/DEBIAN.var). Debian's images have none.
BUILD_RECORDS = ("var/lib/apt/listchanges*",)


@dataclass(frozen=True)
class Image:
    root: Path
    arch: str
    classes: frozenset[str]
    esp_files: frozenset[str] = frozenset()  # paths on the EFI system partition, upper case
    environment: Mapping[str, str] = field(default_factory=dict)  # the build's, as its chroot commands get it

    def path(self, relative: str) -> Path:
        return self.root / relative

    def has(self, cls: str) -> bool:
        return cls in self.classes


def _table(path: Path) -> list[list[str]]:
    """/etc/passwd, /etc/group: the colon-separated fields of each line."""
    return [line.split(":") for line in path.read_text().splitlines() if line and not line.startswith("#")]


def _allowed(name: str, allowed: set[str]) -> bool:
    return name in allowed or name.startswith(SYSTEM_PREFIXES)


def _lexists(path: Path) -> bool:
    """Whether the path is there, a link included: links in an image point to
    absolute paths, which mean the image's files, not the build host's."""
    return path.is_symlink() or path.exists()


def _system_id(value: str) -> bool:
    return 0 <= int(value) <= 999 or int(value) == 65534


# Each check returns its problems: an empty list means it passed.


def empty_directories(image: Image) -> list[str]:
    problems = []
    for relative in EMPTY_DIRECTORIES:
        path = image.path(relative)
        if not path.is_dir() or path.is_symlink():
            problems.append(f"/{relative} is not a directory")
        elif entries := sorted(p.name for p in path.iterdir()):
            problems.append(f"/{relative} holds {', '.join(entries[:5])}")
    return problems


def absent_files(image: Image) -> list[str]:
    return [f"/{r} exists" for r in ABSENT_FILES if _lexists(image.path(r))]


def _arch(image: Image) -> Arch | None:
    try:
        return Arch.named(image.arch)
    except KeyError:
        return None


def boot_files(image: Image) -> list[str]:
    problems = [f"nothing matches /{pattern}" for pattern in BOOT_FILES if not list(image.root.glob(pattern))]
    arch = _arch(image)
    platforms = arch.spec.grub_platforms if arch else ()
    problems += [
        f"/boot/grub/{platform} is missing"
        for platform in platforms
        if not image.path(f"boot/grub/{platform}").is_dir()
    ]
    return problems


def cloud_release(image: Image) -> list[str]:
    path = image.path("etc/cloud-release")
    return [] if path.is_file() else ["/etc/cloud-release is missing"]


def locale(image: Image) -> list[str]:
    path = image.path("etc/default/locale")
    text = path.read_text() if path.is_file() else None
    return [] if text == "LANG=C.UTF-8\n" else [f"/etc/default/locale is {text!r}, not 'LANG=C.UTF-8\\n'"]


def fstab_regular(image: Image) -> list[str]:
    path = image.path("etc/fstab")
    return [] if path.is_file() and not path.is_symlink() else ["/etc/fstab is not a regular file"]


def resolv_conf(image: Image) -> list[str]:
    path = image.path("etc/resolv.conf")
    return [] if path.is_symlink() or not path.exists() else ["/etc/resolv.conf is a file (the build host's?)"]


def groups(image: Image) -> list[str]:
    rows = _table(image.path("etc/group"))
    names = {row[0] for row in rows}
    problems = [f"group {name} is missing" for name in sorted(REQUIRED_GROUPS - names)]
    problems += [
        f"group {row[0]} is not one Debian's images have"
        for row in rows
        if not _allowed(row[0], BASE_PASSWD_GROUPS | PACKAGE_GROUPS)
    ]
    problems += [f"group {row[0]} has gid {row[2]}" for row in rows if not _system_id(row[2])]
    return problems


def users(image: Image) -> list[str]:
    rows = _table(image.path("etc/passwd"))
    names = {row[0] for row in rows}
    problems = [f"user {name} is missing" for name in ("root", "nobody") if name not in names]
    problems += [
        f"user {row[0]} is not one Debian's images have"
        for row in rows
        if not _allowed(row[0], BASE_PASSWD_USERS | PACKAGE_USERS)
    ]
    problems += [f"user {row[0]} has uid {row[2]}" for row in rows if not _system_id(row[2])]
    expected_shell = {"root": {"/bin/bash"}, "sync": {"/bin/sync"}}
    problems += [
        f"user {row[0]} has the shell {row[6]}"
        for row in rows
        if row[6] not in expected_shell.get(row[0], NO_LOGIN_SHELLS)
    ]
    return problems


def packages_installed(image: Image) -> list[str]:
    problems, package = [], None
    for line in image.path("var/lib/dpkg/status").read_text().splitlines():
        if line.startswith("Package: "):
            package = line.split(": ", 1)[1]
        elif line.startswith("Status: ") and line != "Status: install ok installed":
            problems.append(f"{package}: {line}")
    return problems


def var_log(image: Image) -> list[str]:
    log = image.path("var/log")
    if not log.is_dir():
        return ["/var/log is not a directory"]
    problems = [
        f"/var/log/{p.name} is not allowed there" for p in sorted(log.iterdir()) if p.name not in VAR_LOG_ALLOWED
    ]
    problems += [
        f"/{p.relative_to(image.root)} is not empty"
        for p in sorted(log.rglob("*"))
        if p.is_file() and not p.is_symlink() and p.stat().st_size
    ]
    return problems


def init_outlives_fai(image: Image) -> list[str]:
    """FAI deletes /sbin/init at its very end and renames a diverted original
    back (scripts/DEBIAN/30-keep-init): one of the two must be there to boot."""
    diversions = image.path("var/lib/dpkg/diversions").read_text().splitlines()
    diverted = any(
        diversions[i] == "/sbin/init" and diversions[i + 2] == "fai" for i in range(0, len(diversions) - 2, 3)
    )
    wanted = "sbin/init.distrib" if diverted else "sbin/init"
    return [] if _lexists(image.path(wanted)) else [f"/{wanted} is missing"]


def fstab_by_partuuid(image: Image) -> list[str]:
    lines = [
        line.split()
        for line in image.path("etc/fstab").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    problems = [
        f"fstab mounts {fields[1]} from {fields[0]}" for fields in lines if not fields[0].startswith("PARTUUID=")
    ]
    mounts = {fields[1] for fields in lines}
    problems += [f"fstab does not mount {m}" for m in ("/", "/boot/efi") if m not in mounts]
    return problems


def grub_root(image: Image) -> list[str]:
    cfg = image.path("boot/grub/grub.cfg")
    text = cfg.read_text() if cfg.is_file() else ""
    kernels = [line.split() for line in text.splitlines() if line.strip().startswith("linux")]
    if not kernels:
        return ["grub.cfg boots no kernel"]
    return [
        f"grub.cfg boots with {arg}"
        for words in kernels
        for arg in words
        if arg.startswith("root=") and not arg.startswith("root=PARTUUID=")
    ]


def boot_loader_on_esp(image: Image) -> list[str]:
    arch = _arch(image)
    if arch is None:
        return []
    suffix = arch.spec.efi_name.upper()
    wanted = (
        f"EFI/BOOT/BOOT{suffix}.EFI",
        f"EFI/BOOT/GRUB{suffix}.EFI",
        f"EFI/DEBIAN/SHIM{suffix}.EFI",
        f"EFI/DEBIAN/GRUB{suffix}.EFI",
        "EFI/DEBIAN/GRUB.CFG",
    )
    return [f"the ESP lacks {name}" for name in wanted if name not in image.esp_files]


def fresh_identity(image: Image) -> list[str]:
    problems = [
        f"/{r} is not empty"
        for r in ("etc/machine-id", "etc/hostname")
        if not image.path(r).is_file() or image.path(r).stat().st_size
    ]
    problems += [f"/{p.relative_to(image.root)} is the build's" for p in image.root.glob("etc/ssh/ssh_host_*")]
    problems += [
        f"/{r} exists" for r in ("var/lib/dbus/machine-id", "var/lib/systemd/random-seed") if _lexists(image.path(r))
    ]
    return problems


def no_build_leftovers(image: Image) -> list[str]:
    problems = [f"/{r} is still there" for r in BUILD_HELPERS if image.path(r).exists()]
    problems += [
        f"/{p.relative_to(image.root)} is still there"
        for pattern in ("var/cache/apt/archives/*.deb", *BUILD_RECORDS)
        for p in sorted(image.root.glob(pattern))
    ]
    hosts = image.path("etc/hosts")
    for line in hosts.read_text().splitlines() if hosts.is_file() else []:
        names = set(line.split("#", 1)[0].split()[1:])
        if names - LOCALHOST_NAMES:
            problems.append(f"/etc/hosts names {', '.join(sorted(names - LOCALHOST_NAMES))} (the build host's?)")
    if image.path("var/lib/fai").exists():
        problems.append("/var/lib/fai (the build's disk names) is still there")
    return problems


def no_credential_in_the_build(image: Image) -> list[str]:
    """Nothing named like a credential (tasks/system/hostenv.py) in the build's environment: the one
    FAI gives every program it runs in the image's chroot, these checks included."""
    # Named, never shown: the value is the secret.
    return [f"${name} reached the image's build" for name in hostenv.credentials(image.environment)]


def _root_password(image: Image) -> str:
    return next(row[1] for row in _table(image.path("etc/shadow")) if row[0] == "root")


def console_root_login(image: Image) -> list[str]:
    return [] if _root_password(image) == "" else ["root has a password: nobody can log in on the console"]


def root_locked(image: Image) -> list[str]:
    return [] if _root_password(image)[:1] in ("*", "!") else ["root can log in with a password"]


def absent(*relative: str) -> Callable[[Image], list[str]]:
    def check(image: Image) -> list[str]:
        return [f"/{r} exists" for r in relative if _lexists(image.path(r))]

    return check


def present(*relative: str) -> Callable[[Image], list[str]]:
    def check(image: Image) -> list[str]:
        return [f"/{r} is missing" for r in relative if not _lexists(image.path(r))]

    return check


def always(image: Image) -> bool:
    return True


def with_class(cls: str) -> Callable[[Image], bool]:
    return lambda image: image.has(cls)


@dataclass(frozen=True)
class Check:
    name: str
    run: Callable[[Image], list[str]]
    applies: Callable[[Image], bool] = always
    debian: bool = False  # one of Debian's own in-image tests


CHECKS = (
    Check("runtime and cache directories are empty", empty_directories, debian=True),
    Check("no mailname and no kernel links in /", absent_files, debian=True),
    Check("kernel, initramfs, grub.cfg and GRUB's modules in /boot", boot_files, debian=True),
    Check("/etc/cloud-release exists", cloud_release, debian=True),
    Check("locale is C.UTF-8", locale, debian=True),
    Check("/etc/fstab is a regular file", fstab_regular, debian=True),
    Check("/etc/resolv.conf is a link or absent", resolv_conf, debian=True),
    Check("only Debian's system groups", groups, debian=True),
    Check("only Debian's system users, none of them with a login shell", users, debian=True),
    Check("every package is fully installed", packages_installed, debian=True),
    Check("/var/log holds only what Debian allows, emptied", var_log, debian=True),
    Check("an init that outlives FAI's clean-up", init_outlives_fai),
    Check("fstab mounts by PARTUUID", fstab_by_partuuid),
    Check("grub.cfg finds root by PARTUUID", grub_root),
    Check("shim and signed GRUB on the ESP", boot_loader_on_esp),
    Check("a fresh identity for every instance", fresh_identity),
    Check("nothing of the build host or the build left", no_build_leftovers),
    Check("no credential reaches the image's build", no_credential_in_the_build),
    Check("root logs in on the console without a password", console_root_login, with_class("NOCLOUD")),
    Check("no cloud-init and no SSH server", absent("usr/bin/cloud-init", "usr/sbin/sshd"), with_class("NOCLOUD")),
    Check("root has no password", root_locked, with_class("CLOUD")),
    Check("an SSH server", present("usr/sbin/sshd"), with_class("CLOUD")),
    Check("no cloud-init beside Google's guest agent", absent("usr/bin/cloud-init"), with_class("GCE")),
)


def run(image: Image, checks=CHECKS) -> dict[str, list[str]]:
    """Every check that applies to the image, by name: its problems."""
    results = {}
    for check in checks:
        if check.applies(image):
            try:
                results[check.name] = check.run(image)
            except (OSError, ValueError, IndexError, StopIteration) as error:
                results[check.name] = [f"could not check: {error!r}"]
    return results


def esp_files(device: str) -> frozenset[str]:
    """Every file on a FAT file system, read with mtools (the build host may lack vfat)."""
    listing = subprocess.run(
        ["mdir", "-/", "-b", "-i", device, "::/"],
        capture_output=True,
        text=True,
        env={"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"},
    )
    return frozenset(
        line.removeprefix("::/").upper()
        for line in listing.stdout.splitlines()
        if line.startswith("::/") and not line.endswith("/")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--arch", required=True)
    parser.add_argument("--classes", required=True, help="FAI's classes, separated by blanks")
    parser.add_argument("--esp", help="the EFI system partition's device or image file")
    args = parser.parse_args(argv)
    image = Image(
        args.root,
        args.arch,
        frozenset(args.classes.split()),
        esp_files(args.esp) if args.esp else frozenset(),
        dict(os.environ),
    )
    failed = 0
    for name, problems in run(image).items():
        if problems:
            failed += 1
            # FAI's tests task fails the build on "FAILED with" in test.log.
            print(f"image check FAILED with: {name}: {'; '.join(problems[:10])}")
        else:
            print(f"image check passed: {name}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
